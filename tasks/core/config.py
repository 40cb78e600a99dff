"""Strict parsing of YAML/JSON into frozen dataclasses: the one parser behind
params.yaml and every format in tasks/contracts.

Unknown keys, missing keys and wrong types are rejected with a message that
names the file and the dotted key, with a "did you mean" for a near miss.
Every problem found at one level is reported at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from tasks.core.errors import DistilleryError


def load_yaml(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.exists():
        raise DistilleryError(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DistilleryError(f"{path}: not valid YAML ({err})") from err


def parse(cls: type, raw: Any, source: str, key: str = "") -> Any:
    """Build dataclass `cls` from `raw`, strictly; errors name `source` and the key."""
    return _convert(cls, raw, source, key)


def dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every leaf key of dataclass `cls`, dotted (nested dataclasses are walked,
    mappings are leaves): what a reader of that section depends on."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        inner = hints[f.name]
        if isinstance(inner, type) and dataclasses.is_dataclass(inner):
            keys += dotted_keys(inner, f"{name}.")
        else:
            keys.append(name)
    return keys


def _fail(source: str, key: str, message: str) -> DistilleryError:
    where = f"'{key}'" if key else "the top level"
    return DistilleryError(f"{source}: {where}: {message}")


def _convert(tp: Any, value: Any, source: str, key: str) -> Any:
    if tp is Any:  # free-form options, checked by the component that takes them
        return value
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, source, key)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        (inner,) = [t for t in options if t is not type(None)]
        return _convert(inner, value, source, key)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            hint = _did_you_mean(value, [str(a) for a in allowed])
            raise _fail(source, key, f"must be one of {list(allowed)}, got {value!r}{hint}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _fail(source, key, f"must be a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, source, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _fail(source, key, f"must be a list of {len(args)} values, got {len(value)}")
        return tuple(_convert(t, v, source, f"{key}[{i}]") for i, (t, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(source, key, f"must be a mapping, got {type(value).__name__} {value!r}")
        key_type, value_type = typing.get_args(tp)
        return {
            _convert(key_type, k, source, f"{key}.{k}"): _convert(value_type, v, source, f"{key}.{k}")
            for k, v in value.items()
        }
    return _scalar(tp, value, source, key)


def _scalar(tp: type, value: Any, source: str, key: str) -> Any:
    # bool is an int in Python; never let `true` pass as 1 or 1 as true.
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - a typo in a dataclass, not in the data
        raise TypeError(f"unsupported type {tp}")
    if not ok:
        raise _fail(source, key, f"must be {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _did_you_mean(word: Any, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _build_dataclass(cls: type, value: Any, source: str, key: str) -> Any:
    if not isinstance(value, dict):
        raise _fail(source, key, f"must be a mapping, got {type(value).__name__} {value!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    prefix = f"{key}." if key else ""
    problems = []
    for k in value:
        if k not in names:
            problems.append(f"'{prefix}{k}': unknown key{_did_you_mean(k, names)} (allowed here: {', '.join(names)})")
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    problems += [f"'{prefix}{n}': missing key" for n in required if n not in value]
    kwargs = {}
    for n in names:
        if n in value:
            try:
                kwargs[n] = _convert(hints[n], value[n], source, f"{prefix}{n}")
            except DistilleryError as err:
                problems.append(str(err).removeprefix(f"{source}: "))
    if problems:
        raise DistilleryError(
            f"{source}: "
            + (
                "\n  ".join(problems)
                if len(problems) == 1
                else f"{len(problems)} problems:\n  " + "\n  ".join(problems)
            )
        )
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise _fail(source, key, str(err)) from err
