"""Build a frozen settings dataclass from a mapping of environment variables."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


MIN_SECRET_CHARS = 16  # a short secret is a guessable one: refuse it at start
# A value copied from an example is a public one, however long: "change-me-to-64-hex-chars" in
# a deploy that nobody edited. The rule: lower-cased, with every character but a-z and 0-9
# dropped, the value contains one of these words; or it is one character repeated ("xxxx...").
# Random hex never holds one (g, h, l, m, n, p, r aren't hex digits), nor in practice base64.
PLACEHOLDER_WORDS = ("changeme", "replace", "placeholder", "example")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def is_placeholder(value: str) -> bool:
    """Whether `value` is a placeholder by the rule above (PLACEHOLDER_WORDS)."""
    folded = "".join(c for c in value.lower() if c.isascii() and c.isalnum())
    return len(set(value)) == 1 or any(word in folded for word in PLACEHOLDER_WORDS)


def refuse_short_secret(name: str, value: str, when_empty: str) -> None:
    """A SettingsError naming `name`, never quoting `value`, when it is set but too short or
    a placeholder (is_placeholder)."""
    if value and is_placeholder(value):
        raise SettingsError(
            f"{name}: a placeholder value (it contains one of {', '.join(PLACEHOLDER_WORDS)}, "
            "or repeats one character); set a random one, e.g. `openssl rand -hex 32`"
        )
    if value and len(value) < MIN_SECRET_CHARS:
        raise SettingsError(f"{name}: shorter than {MIN_SECRET_CHARS} chars ({when_empty})")


def setting(default: Any, help: str, *, secret: bool = False, **meta: Any) -> Any:
    """A dataclass field with its help text and checks (`choices`, `min`, `max`) as metadata;
    `secret` keeps the value out of repr, so out of logs and tracebacks."""
    return dataclasses.field(default=default, repr=not secret, metadata={"help": help, **meta})


def _convert(name: str, raw: str, kind: Any) -> Any:
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise SettingsError(f"{name}: expected a boolean (1/0, true/false), got {raw!r}")
    if kind is int:
        try:
            return int(raw.replace("_", ""))
        except ValueError:
            raise SettingsError(f"{name}: expected an integer, got {raw!r}") from None
    if kind is float:
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
    if kind is Path:
        return Path(raw)
    if kind == tuple[str, ...]:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def from_mapping(cls: type[T], env: Mapping[str, str], prefix: str) -> T:
    """Read every field of `cls` from `env[prefix + FIELD_NAME]`, falling back to its default.

    Field metadata may carry `choices` (allowed strings), `min` and `max` (bounds);
    a violation raises SettingsError naming the variable.
    """
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = prefix + field.name.upper()
        kind = hints[field.name]
        if isinstance(kind, types.UnionType):  # "Path | None" and the like: the first type wins
            kind = typing.get_args(kind)[0]
        if name not in env:
            continue
        value = _convert(name, env[name], kind)
        choices = field.metadata.get("choices")
        if choices is not None and value not in choices:
            raise SettingsError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
        low = field.metadata.get("min")
        if low is not None and value < low:
            raise SettingsError(f"{name}: must be >= {low}, got {value!r}")
        high = field.metadata.get("max")
        if high is not None and value > high:
            raise SettingsError(f"{name}: must be <= {high}, got {value!r}")
        values[field.name] = value
    return cls(**values)


def describe(cls: type) -> list[tuple[str, str, str]]:
    """(variable, default, help) rows for documentation and `--help`."""
    rows = []
    for field in dataclasses.fields(cls):
        default = field.default if field.default is not dataclasses.MISSING else ""
        if isinstance(default, tuple):
            default = ",".join(default)
        rows.append((field.name.upper(), str(default), field.metadata.get("help", "")))
    return rows
