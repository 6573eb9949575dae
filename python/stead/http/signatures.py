"""RPC method signatures: argument binding and validation against type hints.

One :class:`Signature` per RPC method, built once. ``bind`` turns the JSON
``args``/``kwargs`` of a request into the values the method receives, converted
with ``msgspec.convert`` (so ``"2024-01-01T00:00:00Z"`` becomes a ``datetime``
and the key ``"1"`` of a ``dict[int, str]`` the int ``1`` where the hint says
so), or raises :class:`ArgumentError` (a 400).
"""

from __future__ import annotations

import inspect
import logging
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from stead.objects import RpcMethod

__all__ = ["ArgumentError", "Parameter", "Signature"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

_EMPTY = inspect.Parameter.empty


class ArgumentError(ValueError):
    """The arguments do not fit the method's signature or type hints."""


@dataclass(frozen=True)
class Parameter:
    """One parameter of an RPC method (``self`` excluded)."""

    name: str
    kind: inspect._ParameterKind
    hint: Any  # ``Any`` when unannotated or unresolvable
    required: bool

    @property
    def positional(self) -> bool:
        return self.kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        )


class Signature:
    """How to call one RPC method from JSON arguments."""

    def __init__(self, method: RpcMethod) -> None:
        self.name = method.name
        hints = _type_hints(method)
        self._signature = inspect.signature(method.function)
        self.parameters = [
            Parameter(p.name, p.kind, hints.get(p.name, Any), _is_required(p))
            for p in list(self._signature.parameters.values())[1:]
        ]
        self.result = hints.get("return", Any)
        self._by_name = {p.name: p for p in self.parameters}
        self._takes_nothing = not any(p.required for p in self.parameters)
        self._untyped = all(p.hint is Any for p in self.parameters)

    def bind(
        self, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        """The converted ``(args, kwargs)`` to call with; ``ArgumentError`` if they do not fit."""
        if not args and not kwargs and self._takes_nothing:
            return [], {}
        try:
            bound = self._signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            raise ArgumentError(f"{self.name}(): {exc}") from None
        if not self._untyped:
            for name, value in bound.arguments.items():
                parameter = self._by_name.get(name)
                if parameter is not None:
                    bound.arguments[name] = _convert_parameter(parameter, value)
        return list(bound.args[1:]), dict(bound.kwargs)


def _convert_parameter(parameter: Parameter, value: Any) -> Any:
    hint = parameter.hint
    if hint is Any:
        return value
    if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
        return tuple(_convert(parameter.name, item, hint) for item in value)
    if parameter.kind is inspect.Parameter.VAR_KEYWORD:
        return {key: _convert(key, item, hint) for key, item in value.items()}
    return _convert(parameter.name, value, hint)


def _convert(name: str, value: Any, hint: Any) -> Any:
    try:
        return msgspec.convert(value, hint, str_keys=True)  # JSON object keys are str
    except msgspec.ValidationError as exc:
        raise ArgumentError(f"argument {name!r}: {exc}") from None
    except TypeError:
        return value  # a hint msgspec cannot check: pass the JSON value through


def _is_required(parameter: inspect.Parameter) -> bool:
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return parameter.default is _EMPTY and parameter.kind not in variadic


def _type_hints(method: RpcMethod) -> dict[str, Any]:
    try:
        return typing.get_type_hints(method.function, include_extras=True)
    except Exception as exc:  # names only imported under TYPE_CHECKING, say
        logger.debug("hints of %s unresolvable (%s); arguments go unchecked", method.name, exc)
        return {}
