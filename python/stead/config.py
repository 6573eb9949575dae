"""Settings read once from ``STEAD_*`` environment variables into a frozen object.

The CLI options take the same variables through click's ``envvar=`` (the
names below), so ``STEAD_PORT=9000 stead serve`` and ``stead serve --port 9000``
agree. Library code calls :meth:`Config.from_env` once where it needs a
setting and passes the values on; nothing reads ``os.environ`` elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_HOST",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_PORT",
    "ENV_DATA_DIR",
    "ENV_DISABLE_PLUGIN_AUTOLOAD",
    "ENV_DURABILITY",
    "ENV_HOST",
    "ENV_MAX_BODY_BYTES",
    "ENV_PORT",
    "ENV_TOKEN",
    "ENV_VAR_PREFIX",
    "Config",
    "parse_var",
]

ENV_DATA_DIR = "STEAD_DATA_DIR"
ENV_HOST = "STEAD_HOST"
ENV_PORT = "STEAD_PORT"
ENV_DURABILITY = "STEAD_DURABILITY"
ENV_TOKEN = "STEAD_TOKEN"
ENV_MAX_BODY_BYTES = "STEAD_MAX_BODY_BYTES"
ENV_DISABLE_PLUGIN_AUTOLOAD = "STEAD_DISABLE_PLUGIN_AUTOLOAD"
#: ``STEAD_VAR_<NAME>=value`` gives the served objects' ``env`` the var ``NAME``.
ENV_VAR_PREFIX = "STEAD_VAR_"

DEFAULT_DATA_DIR = "./stead-data"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
DEFAULT_MAX_BODY_BYTES = 1024 * 1024

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


@dataclass(frozen=True)
class Config:
    """Process-wide settings; every field has the default documented in docs/cli.md."""

    data_dir: str = DEFAULT_DATA_DIR
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    durability: str = "fsync"
    #: Bearer token every route but ``/healthz`` requires; ``None``: no auth.
    token: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    disable_plugin_autoload: bool = False
    #: Vars for the objects' ``env`` (``Runtime(vars=...)``), from ``STEAD_VAR_*``.
    vars: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Read the ``STEAD_*`` variables (``ValueError`` naming a malformed one)."""
        env = os.environ if environ is None else environ
        return cls(
            data_dir=env.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR,
            host=env.get(ENV_HOST) or DEFAULT_HOST,
            port=_int(env, ENV_PORT, DEFAULT_PORT, high=65535),
            durability=env.get(ENV_DURABILITY) or "fsync",
            token=env.get(ENV_TOKEN) or None,
            max_body_bytes=_int(env, ENV_MAX_BODY_BYTES, DEFAULT_MAX_BODY_BYTES),
            disable_plugin_autoload=_flag(env, ENV_DISABLE_PLUGIN_AUTOLOAD),
            vars=_vars(env),
        )


def parse_var(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` as ``(name, value)`` (``ValueError`` without a name and ``=``)."""
    name, sep, value = text.partition("=")
    if not sep or not _is_var_name(name):
        raise ValueError(
            f"expected NAME=VALUE with NAME an identifier not starting with '_', not {text!r}"
        )
    return name, value


def _is_var_name(name: str) -> bool:
    return name.isidentifier() and not name.startswith("_")


def _vars(env: Mapping[str, str]) -> dict[str, str]:
    found = {}
    for variable, value in env.items():
        if variable.startswith(ENV_VAR_PREFIX):
            name = variable[len(ENV_VAR_PREFIX) :]
            if not _is_var_name(name):
                raise ValueError(
                    f"{variable}: {name!r} is not a var name (an identifier not starting with '_')"
                )
            found[name] = value
    return dict(sorted(found.items()))


def _int(
    env: Mapping[str, str], name: str, default: int, low: int = 0, high: int | None = None
) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer, not {text!r}") from None
    if value < low or (high is not None and value > high):
        bounds = f"{low} to {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bounds}, not {value}")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    text = env.get(name, "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{name} must be 1/0, true/false, yes/no or on/off, not {text!r}")
