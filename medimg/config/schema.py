"""Reading a config mapping into a dataclass, strictly: every field must be there, no unknown key may be.

The YAML files are the one home of every default, so the dataclasses here have no defaults: a key missing from
the composed config is a bug in a YAML file (the config tests compose every option and catch it), and an
unknown key is a typo. Nested dataclasses and ``dict[str, <dataclass>]`` fields are read recursively; a
dataclass with a field named ``extra`` takes the keys it does not declare there instead of refusing them.
Each dataclass may define ``check(self)`` to validate values; errors name the full key (``dataset.img_size``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from medimg.errors import ConfigError

T = TypeVar("T")
MISSING = "???"


def read(cls: type[T], node: Mapping[str, Any] | None, where: str) -> T:
    """``cls`` built from ``node`` (a plain mapping: the resolved config section at ``where``)."""
    if not isinstance(node, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys, got {node!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    declared = [n for n in names if n != "extra"]
    optional = {n: f.default for n, f in fields.items() if f.default is not dataclasses.MISSING}
    missing = [n for n in declared if n not in node and n not in optional]
    if missing:
        raise ConfigError(f"config keys missing: {', '.join(key(where, n) for n in missing)} "
                          f"(every key needs a value in its YAML file)")
    unknown = sorted(k for k in node if k not in declared)
    if unknown and "extra" not in names:
        raise ConfigError(f"unknown config keys: {unknown_keys(where, unknown, declared)}; "
                          f"known keys{' of ' + where if where else ''}: {', '.join(declared)}")
    values = {n: _value(hints[n], node[n], key(where, n)) if n in node else optional[n] for n in declared}
    if "extra" in names:
        values["extra"] = {k: node[k] for k in unknown}
    obj = cls(**values)
    check = getattr(obj, "check", None)
    if callable(check):
        check(where or "")
    return obj


def closest(name: str, valid: typing.Iterable[str]) -> str | None:
    """The valid key most like ``name`` (a typo's fix), or None when none is close."""
    found = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.6)
    return found[0] if found else None


def unknown_keys(where: str, unknown: typing.Iterable[str], valid: typing.Sequence[str]) -> str:
    """``a.b (did you mean a.c?), a.d`` for the keys ``unknown`` of the section ``where``."""
    def one(k: str) -> str:
        match = closest(k, valid)
        return key(where, k) + (f" (did you mean {key(where, match)}?)" if match else "")

    return ", ".join(one(k) for k in unknown)


def key(where: str, name: str) -> str:
    """The dotted config key of ``name`` inside the section ``where`` ("" = the top level)."""
    return f"{where}.{name}" if where else str(name)


def _value(hint: Any, value: Any, where: str) -> Any:
    if isinstance(value, str) and value == MISSING:
        raise ConfigError(f"{where} has no value; set it on the command line: {where}=...")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(arms) < len(typing.get_args(hint)):
            return None
        return _value(arms[0], value, where) if len(arms) == 1 else value  # several types: check() decides
    if dataclasses.is_dataclass(hint):
        return read(hint, value, where)
    if origin is dict:
        _, item = typing.get_args(hint)
        if dataclasses.is_dataclass(item):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where} must be a mapping, got {value!r}")
            return {str(k): read(item, v, key(where, k)) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: must be a list, e.g. {where}=[a,b], got {value!r}")
        item = typing.get_args(hint)[0] if typing.get_args(hint) else Any
        return [_value(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    return _scalar(hint, value, where)


def _scalar(hint: Any, value: Any, where: str) -> Any:
    """``value`` as the scalar type ``hint`` wants (numbers are accepted where text is), or a ConfigError."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: must be true or false, got {value!r}")
    if hint is int and not (number and float(value).is_integer()):
        raise ConfigError(f"{where}: must be a whole number, got {value!r}")
    if hint is float and not number:
        raise ConfigError(f"{where}: must be a number, got {value!r}")
    if hint is str and not isinstance(value, str):
        if not number:
            raise ConfigError(f"{where}: must be text, got {value!r}")
        return str(value)
    return int(value) if hint is int else value


def require(ok: bool, where: str, message: str) -> None:
    """Raise a ConfigError about key ``where`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{where}: {message}")


def one_of(value: Any, choices: typing.Sequence[Any], where: str) -> None:
    require(value in choices, where, f"{value!r} is not one of {', '.join(map(str, choices))}")


def positive(value: Any, where: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    require(isinstance(value, int | float) and not isinstance(value, bool) and value > 0, where,
            f"must be a number > 0, got {value!r}")


def fraction(value: Any, where: str) -> None:
    require(isinstance(value, int | float) and 0 < value < 1, where, f"must be a fraction in (0, 1), got {value!r}")


def auto_or_bool(value: Any, where: str) -> None:
    require(value == "auto" or isinstance(value, bool), where, f"must be auto, true or false, got {value!r}")


def as_dict(obj: Any) -> Any:
    """A settings dataclass back to the plain dicts it was read from (``extra`` keys back in their section): for
    checkpoints, logs and hyper-parameters."""
    if dataclasses.is_dataclass(obj):
        out = {f.name: as_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name != "extra"}
        return {**out, **as_dict(getattr(obj, "extra", {}))}
    if isinstance(obj, dict):
        return {k: as_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [as_dict(v) for v in obj]
    return obj


def flatten(d: dict[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested dicts -> one level with dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}{sep}", sep))
        else:
            out[f"{prefix}{k}"] = v
    return out
