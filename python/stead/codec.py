"""Encoding of stored values and RPC payloads with msgspec (MessagePack).

One reused encoder, and one reused decoder per target type. Everything that
crosses an object boundary (stored values, RPC arguments, results, errors) goes
through here, so embedded and served modes see the same values.
"""

from __future__ import annotations

from typing import Any

import msgspec

from stead.errors import SerializationError

__all__ = [
    "INT_RANGE",
    "can_decode_into",
    "copy",
    "decode",
    "encode",
    "fast_decode",
    "fast_encode",
    "passthrough_types",
]

_encoder = msgspec.msgpack.Encoder()
_untyped_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder()
_typed_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}

# The C methods themselves, for hot paths that cannot afford a Python frame per
# value (storage get/put). fast_encode raises msgspec's own errors: call encode
# on failure to raise SerializationError. fast_decode is untyped and for bytes
# this module encoded, which always decode.
fast_encode = _encoder.encode
fast_decode = _untyped_decoder.decode

# Immutable values that always survive the codec unchanged (ints within MessagePack's range).
_IMMUTABLE: frozenset[type] = frozenset({int, float, bool, type(None)})
INT_RANGE = range(-(2**63), 2**64)
# Values of these types decode back to an equal value of the same type without a type hint.
_SELF_DESCRIBING = frozenset({int, float, str, bool, type(None), bytes, list, dict})


def encode(value: Any) -> bytes:
    """Encode ``value``; ``SerializationError`` if msgspec cannot."""
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as error:
        raise SerializationError(f"cannot encode {type(value).__name__}: {error}") from None
    except RecursionError:  # a value that contains itself is the usual cause
        raise SerializationError(
            f"cannot encode {type(value).__name__}: it contains itself, or is nested too deeply"
        ) from None


def decode(data: bytes, type: Any = None) -> Any:
    """Decode ``data``, into ``type`` when given; ``SerializationError`` on mismatch."""
    try:
        if type is None:
            return _untyped_decoder.decode(data)
        return _decoder_for(type).decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as error:
        raise SerializationError(f"cannot decode value: {error}") from None


def _decoder_for(type: Any) -> msgspec.msgpack.Decoder[Any]:
    decoder = _typed_decoders.get(type)
    if decoder is None:
        decoder = _typed_decoders[type] = msgspec.msgpack.Decoder(type)
    return decoder


def can_decode_into(type: Any) -> bool:
    """Whether msgspec can decode into ``type``."""
    try:
        _decoder_for(type)
    except (TypeError, ValueError):
        return False
    return True


def passthrough_types(type: Any = None) -> frozenset[type]:
    """The value classes that ``copy(value, type)`` returns unchanged (ints only
    when in ``INT_RANGE``)."""
    if type is None:
        return _IMMUTABLE
    try:
        return frozenset({type}) & _IMMUTABLE
    except TypeError:  # an unhashable hint (a Literal of lists, say): always copy
        return frozenset()


def copy(value: Any, type: Any = None) -> Any:
    """A deep copy of ``value`` made through the codec, as if sent over the wire.

    Decoded into ``type`` when given (``SerializationError`` if the value does
    not fit it); otherwise the top-level type is kept (a ``Struct`` or
    dataclass comes back as itself; tuples come back as lists).
    """
    value_type = value.__class__
    if (
        value_type in _IMMUTABLE
        and (type is None or type is value_type)
        and (value_type is not int or value in INT_RANGE)
    ):
        return value  # immutable and encodable: the copy would be equal and identical in use
    data = encode(value)
    if type is not None:
        return decode(data, type)
    if value_type in _SELF_DESCRIBING or value_type is tuple:
        return _untyped_decoder.decode(data)
    return decode(data, value_type)
