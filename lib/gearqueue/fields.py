"""Validation of message fields: each check names the field and says what it wanted."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from .errors import InvalidMessage
from .message import SAFE_ID

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               dict: "an object", list: "an array"}


def reject_unknown(payload: Mapping[str, Any], allowed: Collection[str]) -> None:
    extra = sorted(set(payload) - set(allowed))
    if extra:
        raise InvalidMessage(f"unknown field(s) {', '.join(map(repr, extra))}; "
                             f"allowed: {', '.join(sorted(allowed))}")


def get_field(payload: Mapping[str, Any], name: str, kind: type | tuple[type, ...], *,
              required: bool = True, default: Any = None) -> Any:
    """payload[name], checked to be of `kind` (bool is never taken for int or float)."""
    if name not in payload or payload[name] is None:
        if required:
            raise InvalidMessage(f"missing field '{name}'")
        return default
    value = payload[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    is_bool = isinstance(value, bool)
    if not isinstance(value, kinds) or (is_bool and bool not in kinds):
        wanted = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise InvalidMessage(f"field '{name}' must be {wanted}, got {type(value).__name__} "
                             f"{_short(value)}")
    return value


def get_choice(payload: Mapping[str, Any], name: str, choices: Collection[str], *,
               required: bool = True, default: str | None = None) -> str | None:
    value = get_field(payload, name, str, required=required, default=default)
    if value is not None and value not in choices:
        raise InvalidMessage(f"field '{name}' must be one of {', '.join(choices)}; "
                             f"got {_short(value)}")
    return value


def get_safe_id(payload: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    """An id that becomes part of a file name: strict pattern, so it cannot leave its folder."""
    value = get_field(payload, name, str, required=required)
    if value is not None and not SAFE_ID.match(value):
        raise InvalidMessage(
            f"field '{name}' is not a valid id: {_short(value)} (allowed: 1-128 letters, "
            f"digits, '.', '_', '-'; not starting with '.', no '..')")
    return value


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"
