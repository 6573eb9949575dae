"""Object ids: 32 bytes shown as 64 hex characters.

The first 16 bytes are derived from the name by HMAC-SHA256 under the runtime
secret (or are random, for unique ids); the last 16 bytes are a tag, an HMAC
over the binding name and the first half, so an id of another binding or a
forged id is rejected by ``id_from_string``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from stead.errors import CorruptionError, InvalidIdError

__all__ = ["MAX_NAME_BYTES", "HmacSha256", "IdFactory", "ObjectId", "load_or_create_secret"]

MAX_NAME_BYTES = 2048
_HALF = 16
_SECRET_FILE = "secret"
_SHA256_BLOCK = 64
_IPAD = bytes(byte ^ 0x36 for byte in range(256))
_OPAD = bytes(byte ^ 0x5C for byte in range(256))


class ObjectId:
    """The address of one object: ``str(id)`` is its hex form, ``id.name`` its
    name (``None`` for unique ids), ``id.binding`` the binding it belongs to."""

    __slots__ = ("_hash", "binding", "name", "raw", "storage_key")

    def __init__(self, raw: bytes, binding: str, name: str | None, storage_key: bytes) -> None:
        self.raw = raw
        self.binding = binding
        self.name = name
        # The engine's object key: a per-binding prefix, so objects list by binding.
        self.storage_key = storage_key
        self._hash = hash(storage_key)

    def __str__(self) -> str:
        return self.raw.hex()

    def __repr__(self) -> str:
        label = f" name={self.name!r}" if self.name is not None else ""
        return f"ObjectId({self.binding}:{self.raw.hex()}{label})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectId) and other.storage_key == self.storage_key

    def __hash__(self) -> int:
        return self._hash


def binding_prefix(binding: str) -> bytes:
    """The 8-byte engine key prefix of a binding's objects."""
    return hashlib.sha256(b"stead-binding\0" + binding.encode()).digest()[:8]


class HmacSha256:
    """HMAC-SHA256 (RFC 2104) under one key, with the padded key states hashed once.

    Ids are derived on every ``get_by_name``: ``hmac.new`` sets the key up again
    on each call, which costs about three times the hashing itself.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _SHA256_BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_SHA256_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


class IdFactory:
    """Makes and checks ids under one runtime secret."""

    def __init__(self, secret: bytes) -> None:
        self._mac = HmacSha256(secret)
        self._prefixes: dict[str, bytes] = {}
        self._bindings_by_prefix: dict[bytes, str] = {}

    def _prefix(self, binding: str) -> bytes:
        prefix = self._prefixes.get(binding)
        if prefix is None:
            prefix = self._prefixes[binding] = binding_prefix(binding)
            self._bindings_by_prefix[prefix] = binding
        return prefix

    def _tag(self, binding: str, head: bytes) -> bytes:
        message = b"tag\0" + binding.encode() + b"\0" + head
        return self._mac.digest(message)[:_HALF]

    def _make(self, binding: str, head: bytes, name: str | None) -> ObjectId:
        raw = head + self._tag(binding, head)
        return ObjectId(raw, binding, name, self._prefix(binding) + raw)

    def from_name(self, binding: str, name: str) -> ObjectId:
        """The id of ``name`` in ``binding``: the same name always gives the same id."""
        if not isinstance(name, str):
            raise InvalidIdError(f"object names are str, not {type(name).__name__}")
        encoded = name.encode()
        if not encoded or len(encoded) > MAX_NAME_BYTES:
            raise InvalidIdError(f"object names are 1 to {MAX_NAME_BYTES} UTF-8 bytes")
        message = b"name\0" + binding.encode() + b"\0" + encoded
        head = self._mac.digest(message)[:_HALF]
        return self._make(binding, head, name)

    def unique(self, binding: str) -> ObjectId:
        """A new random id in ``binding``."""
        return self._make(binding, secrets.token_bytes(_HALF), None)

    def from_string(self, binding: str, text: str, name: str | None = None) -> ObjectId:
        """Parse a hex id, rejecting malformed, forged and foreign ids."""
        try:
            raw = bytes.fromhex(text) if isinstance(text, str) else b""
        except ValueError:
            raw = b""
        if len(raw) != 2 * _HALF:
            raise InvalidIdError(f"not a stead object id: {text!r}")
        if not hmac.compare_digest(raw[_HALF:], self._tag(binding, raw[:_HALF])):
            raise InvalidIdError(f"id {text} does not belong to binding {binding!r}")
        return ObjectId(raw, binding, name, self._prefix(binding) + raw)

    def from_storage_key(self, key: bytes, name: str | None) -> ObjectId | None:
        """The id an engine object key stands for, or ``None`` for an unknown binding."""
        binding = self._bindings_by_prefix.get(key[:8])
        if binding is None:
            return None
        return ObjectId(key[8:], binding, name, key)

    def register(self, binding: str) -> bytes:
        """Make ``binding`` known (for ``from_storage_key``); returns its prefix."""
        return self._prefix(binding)


def load_or_create_secret(data_dir: str | None, *, holds_objects: bool = False) -> bytes:
    """The runtime secret kept in ``data_dir`` (created on first start); in memory, a fresh one.

    ``holds_objects``: the data dir already stores objects. Their ids derive
    from the secret, so a missing one is not created anew (every name would
    address a new, empty object): ``CorruptionError``.
    """
    if data_dir is None:
        return secrets.token_bytes(32)
    path = Path(data_dir) / _SECRET_FILE
    if path.exists():
        secret = path.read_bytes()
        if len(secret) != 32:
            raise CorruptionError(f"{path} is damaged: expected 32 bytes, found {len(secret)}")
        return secret
    if holds_objects:
        raise CorruptionError(
            f"{path} is missing, but the data dir holds objects: restore it from a backup of "
            "this data dir (ids derive from it; a new secret would give every name a new, "
            "empty object)"
        )
    secret = secrets.token_bytes(32)
    temporary = path.with_suffix(".tmp")
    with open(temporary, "wb") as handle:
        handle.write(secret)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _sync_dir(path.parent)  # the rename itself must survive a power loss
    return secret


def _sync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
