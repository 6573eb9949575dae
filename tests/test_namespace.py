"""Ids and namespaces: derivation, validation, listing (DESIGN §2 Addressing)."""

from __future__ import annotations

import hmac
import json
import time
from typing import ClassVar

import pytest

import stead
from stead.ids import HmacSha256, IdFactory
from tests.test_alarms import eventually

pytestmark = pytest.mark.anyio


class Thing(stead.DurableObject):
    def touch(self) -> str | None:
        self.ctx.storage.put("touched", True)
        return self.ctx.id.name


class Other(Thing):
    pass


async def test_names_map_to_stable_ids_across_restarts(data_dir: str) -> None:
    async with stead.Runtime({"T": Thing}, data_dir=data_dir) as rt:
        first = rt.env.T.id_from_name("alice")
        assert first == rt.env.T.id_from_name("alice")
        assert first != rt.env.T.id_from_name("bob")
        assert len(str(first)) == 64 and first.name == "alice" and first.binding == "T"
    async with stead.Runtime({"T": Thing}, data_dir=data_dir) as rt:
        assert str(rt.env.T.id_from_name("alice")) == str(first)


async def test_id_from_string_round_trips_and_rejects_bad_ids(data_dir: str) -> None:
    async with stead.Runtime({"T": Thing, "O": Other}, data_dir=data_dir) as rt:
        unique = rt.env.T.new_unique_id()
        assert unique.name is None
        assert rt.env.T.id_from_string(str(unique)) == unique
        # A wrong tag: the last byte flipped (a fixed "00" matched 1 run in 256).
        wrong_tag = str(unique)[:-2] + f"{int(str(unique)[-2:], 16) ^ 0xFF:02x}"
        for bad in ["", "zz", "00" * 32, wrong_tag, str(unique) + "00"]:
            with pytest.raises(stead.InvalidIdError):
                rt.env.T.id_from_string(bad)
        with pytest.raises(stead.InvalidIdError):
            rt.env.O.id_from_string(str(unique))  # another binding's id
        with pytest.raises(stead.InvalidIdError):
            rt.env.O.get(unique)
        with pytest.raises(ValueError):  # InvalidIdError is a ValueError
            rt.env.T.id_from_name("")
        with pytest.raises(stead.InvalidIdError):
            rt.env.T.id_from_name("x" * 2049)


async def test_ids_from_another_data_dir_are_foreign(tmp_path: object) -> None:
    async with stead.Runtime({"T": Thing}, data_dir=f"{tmp_path}/one") as rt:
        foreign = str(rt.env.T.new_unique_id())
    async with stead.Runtime({"T": Thing}, data_dir=f"{tmp_path}/two") as rt:
        with pytest.raises(stead.InvalidIdError):
            rt.env.T.id_from_string(foreign)


async def test_list_ids_returns_objects_with_storage_and_their_names(data_dir: str) -> None:
    async with stead.Runtime({"T": Thing, "O": Other}, data_dir=data_dir) as rt:
        for name in ["a", "b", "c"]:
            assert await rt.env.T.get_by_name(name).touch() == name
        await rt.env.O.get_by_name("elsewhere").touch()
        unique = rt.env.T.new_unique_id()
        await rt.env.T.get(unique).touch()
        rt.env.T.get_by_name("never-written")
        ids = await rt.env.T.list_ids()
        assert sorted(i.name or "?" for i in ids) == ["?", "a", "b", "c"]
        page = await rt.env.T.list_ids(limit=2)
        rest = await rt.env.T.list_ids(after=page[-1])
        assert [str(i) for i in page + rest] == [str(i) for i in ids]
        assert await rt.env.T.list_ids(after=str(page[-1])) == rest


class Job(stead.DurableObject):
    def schedule(self, when: float) -> None:
        self.ctx.storage.set_alarm(when)

    async def alarm(self, info: stead.AlarmInfo) -> None:
        pass


async def test_an_object_with_only_an_alarm_is_listed_and_inspected(data_dir: str) -> None:
    # A unique-id object that set an alarm and nothing else has storage (its alarm).
    from click.testing import CliRunner

    from stead.cli import cli

    async with stead.Runtime({"JOB": Job}, data_dir=data_dir) as rt:
        job = rt.env.JOB.new_unique_id()
        await rt.env.JOB.get(job).schedule(time.time() + 3600)
        assert await rt.env.JOB.list_ids() == [job]
    result = CliRunner().invoke(cli, ["inspect", data_dir, "--binding", "JOB", "--json"])
    assert result.exit_code == 0, result.output
    [view] = [json.loads(line) for line in result.output.splitlines()]
    assert view["id"] == job.raw.hex() and view["alarm"] is not None


async def test_unique_id_objects_learn_nothing_of_a_name(data_dir: str) -> None:
    async with stead.Runtime({"T": Thing}, data_dir=data_dir) as rt:
        stub = rt.env.T.get(rt.env.T.id_from_string(str(rt.env.T.id_from_name("zed"))))
        assert await stub.touch() is None  # parsed ids carry no name until one is stored
        assert await rt.env.T.get_by_name("zed").touch() == "zed"


@pytest.mark.parametrize("key_bytes", [0, 1, 32, 64, 65, 200])
def test_id_hmac_is_rfc_2104_hmac_sha256(key_bytes: int) -> None:
    # Ids derived from names are stored data: the derivation must stay HMAC-SHA256 exactly.
    key = bytes(range(key_bytes % 256)) * (key_bytes // 256 + 1)
    key = key[:key_bytes]
    mac = HmacSha256(key)
    for message in (b"", b"name\0Counter\0alice", "Zürich".encode() * 40):
        assert mac.digest(message) == hmac.digest(key, message, "sha256")


def test_name_ids_under_a_known_secret_are_unchanged() -> None:
    # The id a name maps to under a given secret: a change here orphans stored objects.
    secret = bytes(range(32))
    object_id = IdFactory(secret).from_name("Counter", "alice")
    head = hmac.digest(secret, b"name\0Counter\0alice", "sha256")[:16]
    tag = hmac.digest(secret, b"tag\0Counter\0" + head, "sha256")[:16]
    assert object_id.raw == head + tag
    assert str(object_id) == (head + tag).hex()


class Emptied(stead.DurableObject):
    def put(self) -> None:
        self.ctx.storage.put("k", 1)

    def delete(self) -> None:
        self.ctx.storage.delete("k")

    def remind(self) -> None:
        self.ctx.storage.set_alarm(time.time() + 3600)

    def forget(self) -> None:
        self.ctx.storage.delete_alarm()


async def test_objects_emptied_key_by_key_are_not_listed(data_dir: str) -> None:
    # Only its recorded name was left: that is not storage (delete_all agreed).
    async with stead.Runtime({"E": Emptied}, data_dir=data_dir) as rt:
        for i in range(6):
            await rt.env.E.get_by_name(f"kept{i}").put()
        emptied, reminded = rt.env.E.get_by_name("emptied"), rt.env.E.get_by_name("reminded")
        await emptied.put()
        await emptied.delete()
        await reminded.remind()
        listed = {object_id.name for object_id in await rt.env.E.list_ids()}
        assert listed == {f"kept{i}" for i in range(6)} | {"reminded"}
        await reminded.forget()
        # Pages are filled past the objects left out.
        first = await rt.env.E.list_ids(limit=4)
        rest = await rt.env.E.list_ids(limit=4, after=first[-1])
        assert len(first) == 4 and len(rest) == 2
        assert {i.name for i in first + rest} == {f"kept{i}" for i in range(6)}
    async with stead.Runtime({"E": Emptied}, data_dir=data_dir) as rt:
        assert len(await rt.env.E.list_ids()) == 6


async def test_list_ids_after_close_raises_runtime_error(data_dir: str) -> None:
    async with stead.Runtime({"T": Thing}, data_dir=data_dir) as rt:
        namespace = rt.env.T
        await namespace.get_by_name("a").touch()
    with pytest.raises(RuntimeError, match="closed"):
        await namespace.list_ids()


# -- objects that hold nothing leave nothing -----------------------------------


class Session(stead.DurableObject):
    alarms: ClassVar[list[str | None]] = []

    def open(self, keys: list[str]) -> None:
        for key in keys:
            self.ctx.storage.put(key, "x" * 100)

    def close(self, keys: list[str]) -> None:
        for key in keys:
            self.ctx.storage.delete(key)

    def remind_in(self, seconds: float) -> None:
        self.ctx.storage.set_alarm(time.time() + seconds)

    async def alarm(self, info: stead.AlarmInfo) -> None:
        Session.alarms.append(self.ctx.id.name)


def _holds(rt: stead.Runtime, object_id: stead.ObjectId) -> bool:
    """Whether the engine keeps anything of the object (its name alone included)."""
    key = object_id.storage_key
    return key in rt.engine.objects(prefix=key, limit=1) or bool(rt.engine.list(key, limit=1))


async def _alarms_ran(count: int) -> None:
    async def ran() -> bool:
        return len(Session.alarms) >= count

    await eventually(ran)


async def test_an_object_whose_keys_are_deleted_one_by_one_is_gone(data_dir: str) -> None:
    async with stead.Runtime({"S": Session}, data_dir=data_dir) as rt:
        kept, ended = rt.env.S.get_by_name("kept"), rt.env.S.get_by_name("ended")
        await kept.open(["a"])
        await ended.open(["a", "b", "c"])
        await ended.close(["a"])
        assert [i.name for i in await rt.env.S.list_ids()] == sorted(
            ["kept", "ended"], key=lambda name: str(rt.env.S.id_from_name(name))
        )
        await ended.close(["b", "c"])
        assert [i.name for i in await rt.env.S.list_ids()] == ["kept"]
        assert not _holds(rt, rt.env.S.id_from_name("ended"))
        assert rt.engine.stats()["objects"] == 1
    async with stead.Runtime({"S": Session}, data_dir=data_dir) as rt:
        assert not _holds(rt, rt.env.S.id_from_name("ended"))
        assert [i.name for i in await rt.env.S.list_ids()] == ["kept"]


async def test_an_object_whose_only_alarm_ran_is_gone(data_dir: str) -> None:
    Session.alarms = []
    async with stead.Runtime({"S": Session}, data_dir=data_dir) as rt:
        reminder = rt.env.S.get_by_name("reminder")
        await reminder.remind_in(0.05)
        assert _holds(rt, reminder.id)
        await _alarms_ran(1)

        async def gone() -> bool:
            return not _holds(rt, reminder.id)

        await eventually(gone)
        assert await rt.env.S.list_ids() == []
    async with stead.Runtime({"S": Session}, data_dir=data_dir) as rt:
        assert not _holds(rt, rt.env.S.id_from_name("reminder"))
        assert rt.engine.stats()["objects"] == 0


async def test_an_object_with_an_alarm_and_no_keys_keeps_its_name(data_dir: str) -> None:
    # The alarm delivered after a restart must still know whose it is.
    Session.alarms = []
    async with stead.Runtime({"S": Session}, data_dir=data_dir) as rt:
        later = rt.env.S.get_by_name("later")
        await later.open(["a"])
        await later.remind_in(0.5)
        await later.close(["a"])
        assert [i.name for i in await rt.env.S.list_ids()] == ["later"]
    async with stead.Runtime({"S": Session}, data_dir=data_dir) as rt:
        assert [i.name for i in await rt.env.S.list_ids()] == ["later"]
        await _alarms_ran(1)
        assert Session.alarms == ["later"]

        async def gone() -> bool:
            return not _holds(rt, rt.env.S.id_from_name("later"))

        await eventually(gone)  # and once it has run, nothing is left


async def test_an_object_that_writes_again_is_listed_by_its_name(data_dir: str) -> None:
    async with stead.Runtime({"S": Session}, data_dir=data_dir) as rt:
        back = rt.env.S.get_by_name("back")
        await back.open(["a"])
        await back.close(["a"])
        assert await rt.env.S.list_ids() == []
        await back.open(["b"])  # the same instance: it knows its name went
        assert [i.name for i in await rt.env.S.list_ids()] == ["back"]
    async with stead.Runtime({"S": Session}, data_dir=data_dir) as rt:
        [listed] = await rt.env.S.list_ids()
        assert listed.name == "back"
        await rt.env.S.get(listed).close(["b"])
        assert await rt.env.S.list_ids() == []
        await rt.env.S.get(listed).open(["c"])  # reached by its id: the name is known
        assert [i.name for i in await rt.env.S.list_ids()] == ["back"]
