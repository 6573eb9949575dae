"""A chat room per name: durable history and a daily digest alarm.

Run: python examples/chat_room/chat_room.py [DATA_DIR]
Run it twice: the second run continues the history of the first.
"""

from __future__ import annotations

import asyncio
import sys
import time

import msgspec

import stead


class Message(msgspec.Struct):
    author: str
    text: str
    at: float


class ChatRoom(stead.DurableObject):
    """One room. Turn-based: two posts never interleave, so ids never collide."""

    def post(self, author: str, text: str) -> int:
        storage = self.ctx.storage
        seq: int = storage.get("seq", 0) + 1
        storage.put_many({"seq": seq, f"msg:{seq:08}": Message(author, text, time.time())})
        if storage.get_alarm() is None:
            storage.set_alarm(time.time() + 24 * 3600)  # the next digest
        return seq

    def history(self, limit: int = 10) -> list[Message]:
        entries = self.ctx.storage.list(prefix="msg:", reverse=True, limit=limit, type=Message)
        return list(reversed(entries.values()))

    async def alarm(self, info: stead.AlarmInfo) -> None:
        count = len(self.ctx.storage.list(prefix="msg:"))
        self.ctx.storage.put("last_digest", {"messages": count, "at": time.time()})


async def main(data_dir: str) -> None:
    async with stead.Runtime({"ROOMS": ChatRoom}, data_dir=data_dir) as rt:
        room = rt.env.ROOMS.get_by_name("general")
        await asyncio.gather(
            room.post("ada", "hello"), room.post("grace", "hi ada"), room.post("linus", "o/")
        )
        for message in await room.history():
            print(f"{message.author:>6}: {message.text}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "./chat-data"))
