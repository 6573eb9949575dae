"""``CACHE_COORDINATOR``: cache invalidation across several stores, by key or by tag.

Routes: ``/register`` (body ``{"key", "store", "tags"}``), ``/invalidate``
(body ``{"key"}``), ``/invalidate-tag`` (body ``{"tag"}``). Invalidating a key
sends ``POST {CACHE_PURGE_BASE}/{store}/purge`` with ``{"keys": [key]}`` to
every store that holds it (concurrently, with a timeout). ``CACHE_PURGE_BASE``
is a runtime var (``Runtime(vars=...)``, ``self.env.CACHE_PURGE_BASE``).

A failed purge (connection error, timeout, a non-2xx answer, no
``CACHE_PURGE_BASE``) is never fatal: it is logged, recorded on the entry
(``failures``, the last 20), named in the answer's ``failed`` field, and the
store stays registered so the next invalidation retries it: by key, or by tag
(the tag keeps the keys that still have stores to purge). Stores that were
purged are removed from the entry, as in the catalog.
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar
from urllib.parse import quote

import httpx
import msgspec

import stead
from stead import Request, Response
from stead_patterns._http import KeyName, decode_body, now_ms, route

__all__ = ["CacheCoordinator", "CacheEntry", "PurgeFailure", "stead_bindings"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

_MAX_FAILURES = 20


class PurgeFailure(msgspec.Struct):
    """One purge that did not succeed."""

    store: str
    error: str
    at: int


class CacheEntry(msgspec.Struct, rename="camel"):
    """The stores and tags of one cache key."""

    key: str
    stores: list[str] = []
    tags: list[str] = []
    invalidated_at: int | msgspec.UnsetType = msgspec.UNSET
    failures: list[PurgeFailure] = []


class _RegisterBody(msgspec.Struct):
    key: KeyName
    store: str
    tags: list[KeyName] = []


class _KeyBody(msgspec.Struct):
    key: KeyName


class _TagBody(msgspec.Struct):
    tag: KeyName


class CacheCoordinator(stead.DurableObject):
    """Knows which stores cache which keys, and purges them on invalidation."""

    #: Seconds one purge call may take before it counts as failed.
    purge_timeout: ClassVar[float] = 5.0

    async def fetch(self, request: Request) -> Response:
        routes = {
            "/register": self._register,
            "/invalidate": self._invalidate,
            "/invalidate-tag": self._invalidate_tag,
        }
        return await route(request, routes, self.ctx.storage)

    async def _register(self, request: Request) -> Response:
        body = decode_body(request, _RegisterBody)
        entry = self.get_entry(body.key) or CacheEntry(body.key)
        if body.store not in entry.stores:
            entry.stores.append(body.store)
        entry.tags = list(dict.fromkeys([*entry.tags, *body.tags]))
        self.ctx.storage.put(f"entry:{body.key}", entry)
        for tag in body.tags:
            keys: list[str] = self.ctx.storage.get(f"tag:{tag}", [], type=list[str])
            if body.key not in keys:
                self.ctx.storage.put(f"tag:{tag}", [*keys, body.key])
        return Response.json({"registered": True})

    async def _invalidate(self, request: Request) -> Response:
        body = decode_body(request, _KeyBody)
        async with self._client() as client:
            purged, failed = await self._invalidate_key(client, body.key)
        return Response.json({"invalidated": True, "stores": purged, "failed": failed})

    async def _invalidate_tag(self, request: Request) -> Response:
        body = decode_body(request, _TagBody)
        keys: list[str] = self.ctx.storage.get(f"tag:{body.tag}", [], type=list[str])
        details: dict[str, list[str]] = {}
        failed: dict[str, list[str]] = {}
        async with self._client() as client:
            for key in keys:
                details[key], key_failed = await self._invalidate_key(client, key)
                if key_failed:
                    failed[key] = key_failed
        if failed:  # only they are left to purge: invalidating the tag again retries them
            self.ctx.storage.put(f"tag:{body.tag}", list(failed))
        else:
            self.ctx.storage.delete(f"tag:{body.tag}")
        return Response.json(
            {
                "invalidated": True,
                "tag": body.tag,
                "keysInvalidated": len(keys),
                "details": details,
                "failed": failed,
            }
        )

    def get_entry(self, key: KeyName) -> CacheEntry | None:
        """The entry of ``key`` (also callable by RPC, to inspect purge failures)."""
        entry: CacheEntry | None = self.ctx.storage.get(f"entry:{key}", type=CacheEntry)
        return entry

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=self.purge_timeout)

    async def _invalidate_key(
        self, client: httpx.AsyncClient, key: str
    ) -> tuple[list[str], list[str]]:
        entry = self.get_entry(key)
        if entry is None:
            return [], []
        errors = await asyncio.gather(*(self._purge(client, store, key) for store in entry.stores))
        now = now_ms()
        outcomes = list(zip(entry.stores, errors, strict=True))
        failures = [PurgeFailure(store, error, now) for store, error in outcomes if error]
        purged = [store for store, error in outcomes if error is None]
        entry.invalidated_at = now
        entry.stores = [failure.store for failure in failures]  # retried next time
        entry.failures = [*entry.failures, *failures][-_MAX_FAILURES:]
        self.ctx.storage.put(f"entry:{key}", entry)
        return purged, entry.stores

    async def _purge(self, client: httpx.AsyncClient, store: str, key: str) -> str | None:
        """Purge ``key`` from ``store``; the error as text, or ``None`` on success."""
        error: str | None
        try:
            base = str(self.env.CACHE_PURGE_BASE).rstrip("/")
        except KeyError:  # UnknownBindingError: the var is not set
            error = "CACHE_PURGE_BASE is not set"
        else:
            error = await _post_purge(client, f"{base}/{quote(store, safe='')}/purge", key)
        if error is not None:
            logger.warning("purging %r from store %r failed: %s", key, store, error)
        return error


async def _post_purge(client: httpx.AsyncClient, url: str, key: str) -> str | None:
    try:
        response = await client.post(url, json={"keys": [key]})
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if not response.is_success:
        return f"HTTP {response.status_code}"
    return None


@stead.hookimpl
def stead_bindings() -> dict[str, type[stead.DurableObject]]:
    return {"CACHE_COORDINATOR": CacheCoordinator}
