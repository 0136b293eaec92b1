"""JSON configs as typed dataclasses, validated on load.

A stage declares its config as dataclasses; `load_config` reads the JSON file,
applies CLI overrides (dotted keys), checks every key and value, and reports all
problems at once, each with the file and the key path:

    config/x.json: processing_params.shard_size: must be >= 1, got 0
    config/x.json: sources[2].kind: unknown key (did you mean 'type'?)

Range and choice rules live in field metadata via `spec(...)`. A dataclass may add
cross-field checks with a `check(self) -> list[str]` method.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

from lmforge.errors import ConfigError

T = TypeVar("T")

# Keys starting with these are comments in JSON configs and are ignored.
COMMENT_PREFIXES = ("_", "$")


def spec(default: Any = dataclasses.MISSING, *, min: float | None = None, max: float | None = None,
         choices: tuple | None = None, help: str = "", default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with validation rules and a help string."""
    meta = {"min": min, "max": max, "choices": choices, "help": help}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


CHECKOUT = Path(__file__).resolve().parents[2]  # src/lmforge/config.py -> the repository root


def project_file(path: str | Path) -> Path:
    """A config path as given when it exists or is absolute; else the same relative path in
    the checkout, when it is there (so shipped defaults work from any directory)."""
    given = Path(path)
    if given.exists() or given.is_absolute():
        return given
    shipped = CHECKOUT / given
    return shipped if shipped.exists() else given


def load_config(path: str | Path, schema: type[T], overrides: dict[str, Any] | None = None) -> T:
    """Read, override and validate a JSON config; raise ConfigError listing every problem."""
    p = Path(path)
    return config_from_dict(read_config_file(p), schema, source=str(p), overrides=overrides)


def read_config_file(path: str | Path) -> Any:
    """The parsed JSON of a config file; every way it can be unreadable is one ConfigError."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except IsADirectoryError:
        raise ConfigError(f"{p} is a directory, not a JSON config file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}): {exc.reason}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{p}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
    except ValueError as exc:  # e.g. an integer longer than Python's 4300-digit limit
        raise ConfigError(f"{p}: unreadable JSON value: {str(exc).split(';')[0][:120]}") from None
    except RecursionError:
        raise ConfigError(f"{p}: JSON nested too deeply") from None
    return raw


def config_from_dict(raw: Any, schema: type[T], source: str = "<config>",
                     overrides: dict[str, Any] | None = None) -> T:
    """Validate an already-parsed mapping against `schema`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a JSON object")
    errors: list[str] = []
    try:
        raw = apply_overrides(raw, overrides or {})
        value = _convert(raw, schema, "", errors)
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None
    if errors:
        given = set(overrides or {})  # a problem with a value from the command line is named as such
        lines = "\n".join(f"  {'command line' if e.split(': ', 1)[0] in given else source}: {e}" for e in errors)
        raise ConfigError(f"invalid config ({len(errors)} problem{'s' * (len(errors) > 1)}):\n{lines}")
    return value


def apply_overrides(raw: dict, overrides: dict[str, Any]) -> dict:
    """Return a copy of `raw` with dotted keys set, e.g. {'training.max_steps': 10}."""
    result = json.loads(json.dumps(raw))
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = result
        *parents, leaf = dotted.split(".")
        for depth, key in enumerate(parents):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                where = ".".join(parents[:depth + 1])
                raise ConfigError(f"--set {dotted}: {where} is {_show(node)}, not an object with keys")
        node[leaf] = value
    return result


def parse_set_overrides(items: list[str] | None) -> dict[str, Any]:
    """Turn `--set a.b=3 --set c=foo` into {'a.b': 3, 'c': 'foo'} (values parsed as JSON when they can be)."""
    result: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, text = item.split("=", 1)
        try:
            result[key.strip()] = json.loads(text)
        except (ValueError, RecursionError):  # not JSON (or absurd JSON): the literal text
            result[key.strip()] = text
    return result


def to_dict(obj: Any) -> Any:
    """A config dataclass as plain JSON data (for manifests)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------- validation internals

def _where(path: str) -> str:
    return path or "(top level)"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "an object"
    if dataclasses.is_dataclass(tp):
        return "an object"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any, path: str, errors: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            trial: list[str] = []
            converted = _convert(value, arg, path, trial)
            if not trial:
                return converted
        errors.append(f"{_where(path)}: expected {_type_name(tp)}, got {_show(value)}")
        return None
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            errors.append(f"{_where(path)}: must be {_type_name(tp)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            errors.append(f"{_where(path)}: expected a list, got {_show(value)}")
            return []
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_convert(v, item_tp, f"{path}[{i}]", errors) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{_where(path)}: expected an object, got {_show(value)}")
            return {}
        _, val_tp = typing.get_args(tp) or (str, Any)
        return {k: _convert(v, val_tp, f"{path}.{k}" if path else k, errors) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(value, tp, path, errors)
    return _convert_scalar(value, tp, path, errors)


def _convert_scalar(value: Any, tp: Any, path: str, errors: list[str]) -> Any:
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp, True)
    if not ok:
        errors.append(f"{_where(path)}: expected {_type_name(tp)}, got {_show(value)}")
        return value
    if tp is float:
        try:
            value = float(value)
        except OverflowError:
            errors.append(f"{_where(path)}: number too large")
            return None
    if isinstance(value, float) and not math.isfinite(value):
        errors.append(f"{_where(path)}: must be a finite number, got {value}")
        return None
    return value


def _show(value: Any) -> str:
    """A short rendering of a bad value for an error line (never fails on odd values)."""
    try:
        return json.dumps(value)[:60]
    except (ValueError, TypeError, RecursionError):
        return f"a {type(value).__name__}"


def _convert_dataclass(value: Any, cls: type, path: str, errors: list[str]) -> Any:
    if not isinstance(value, dict):
        errors.append(f"{_where(path)}: expected an object, got {_show(value)}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in value:
        if key in fields or key.startswith(COMMENT_PREFIXES):
            continue
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(sorted(fields))})"
        errors.append(f"{path + '.' if path else ''}{key}: unknown key{hint}")
    kwargs = {}
    errors_before = len(errors)
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                errors.append(f"{sub}: required key is missing")
            continue
        before = len(errors)
        converted = _convert(value[name], hints[name], sub, errors)
        if len(errors) == before:
            _check_rules(converted, f.metadata, sub, errors)
        kwargs[name] = converted
    missing_required = any(e.endswith("required key is missing") for e in errors)
    try:
        obj = cls(**kwargs)
    except TypeError:
        if not missing_required:
            raise
        return None
    check = getattr(obj, "check", None)
    if callable(check):
        prefix = f"{path}: " if path else ""
        errors.extend(prefix + msg for msg in _cross_checks(check, fields_failed=len(errors) > errors_before))
    return obj


def _cross_checks(check, *, fields_failed: bool) -> list[str]:
    """A dataclass's `check()` messages, so every problem is reported at once.

    Cross-field checks assume valid fields: on values that already failed
    validation (num_heads 0, a null stage) they may raise (ZeroDivisionError,
    AttributeError). Then the field errors already say what is wrong, and the
    check's own failure is dropped rather than shown as a traceback.
    """
    if not fields_failed:
        return list(check())
    try:
        return list(check())
    except Exception:  # noqa: BLE001 - see above: only when a field already failed
        return []


def _check_rules(value: Any, meta: typing.Mapping, path: str, errors: list[str]) -> None:
    if value is None:
        return
    lo, hi, choices = meta.get("min"), meta.get("max"), meta.get("choices")
    if choices is not None and value not in choices:
        errors.append(f"{path}: must be one of {', '.join(map(repr, choices))}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and value < lo:
            errors.append(f"{path}: must be >= {lo}, got {value}")
        if hi is not None and value > hi:
            errors.append(f"{path}: must be <= {hi}, got {value}")
