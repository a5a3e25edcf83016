"""The configuration engine: typed values, YAML files with ``_BASE_``, unknown keys with a did-you-mean.

Every configuration of the project goes through here: the pre-training schema
(:mod:`refers.config.pretrain`), the fine-tuning flags and their YAML presets
(:mod:`refers.finetune.config`), sweep files (:mod:`refers.sweep`) and the demo's profiles
(:mod:`refers.demo`). Each declares its keys once, with a :class:`Spec` (type, allowed values,
range) per key; this module reads the files and checks the values, so a typo or a wrong type is
refused when the file loads, with a one-line message (exit code 2) that names the key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import yaml

from refers.base.errors import UserError

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class ConfigError(UserError, ValueError):
    """A configuration file, override or flag value that does not fit its schema (exit code 2)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message, exit_code)


@dataclass(frozen=True)
class Spec:
    """What one configuration value may be.

    Attributes:
        kind: ``bool``, ``int``, ``float``, ``str``, ``list`` or ``dict`` (ints widen to floats).
        item: the type of a list's items (``int`` or ``float``; ``str`` for lists of words).
        length: a list's exact number of items (None: any).
        nullable: None is allowed.
        choices: the allowed values (empty: any of the kind).
        low, high: the range (None: unbounded); ``open_low`` / ``open_high`` exclude the bound.
        ordered: a list's items must be non-decreasing (``[min, max]`` ranges).
    """

    kind: type
    item: type | None = None
    length: int | None = None
    nullable: bool = False
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    ordered: bool = False

    def describe(self) -> str:
        if self.kind is list:
            count = f"{self.length} " if self.length else ""
            noun = {int: "integers", float: "numbers", str: "strings"}.get(self.item, "values")
            return f"a list of {count}{noun}"
        return self.kind.__name__ + (" or null" if self.nullable else "")

    def check(self, key: str, value: Any, origin: str = "") -> Any:
        """``value`` checked (type, choices, range) and normalised (ints widen to floats).

        Raises:
            ConfigError: naming ``key`` (prefixed with ``origin``) and the value.
        """
        where = f"{origin}: " if origin else ""
        if value is None and self.nullable:
            return None
        ok, typed = _typed(self.kind, value, self.item)
        if ok and self.kind is list and self.length is not None:
            ok = len(typed) == self.length
        if not ok:
            raise ConfigError(f"{where}{key} must be {self.describe()}, got {value!r}")
        value = typed
        if self.choices and value not in self.choices:
            raise ConfigError(f"{where}{key} must be {_alternatives(self.choices)}, got {value!r}{did_you_mean(value, self.choices)}")
        for number in value if self.kind is list else [value]:
            self._check_number(key, number, where)
        if self.ordered and any(a > b for a, b in zip(value, value[1:])):
            raise ConfigError(f"{where}{key} must be [min, max] with min <= max, got {value!r}")
        return value

    def _check_number(self, key: str, value: Any, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}{key} must be a finite number, got {value!r}")
        below = self.low is not None and (value <= self.low if self.open_low else value < self.low)
        above = self.high is not None and (value >= self.high if self.open_high else value > self.high)
        if below or above:
            raise ConfigError(f"{where}{key} must be {self.describe_range()}, got {value!r}")

    def describe_range(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.high is None:
            return f"{'>' if self.open_low else '>='} {low}"
        if self.low is None:
            return f"{'<' if self.open_high else '<='} {high}"
        return f"in {'(' if self.open_low else '['}{low}, {high}{')' if self.open_high else ']'}"

    def parse(self, key: str, text: str, origin: str = "") -> Any:
        """A value given as text (``--config-override KEY VALUE``): read as YAML, then checked.

        Booleans take true/false/yes/no/on/off/1/0; strings are taken as written; a list of numbers
        may be written ``[0.2, 1.0]`` or ``0.2,1.0``; ``3e-3`` is a float.
        """
        where = f"{origin}: " if origin else ""
        if self.kind is bool:
            if text.lower() not in _TRUE | _FALSE:
                raise ConfigError(f"{where}{key} must be true or false, got {text!r}")
            return text.lower() in _TRUE
        if self.kind is str:
            return self.check(key, text, origin)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        if self.kind is float and isinstance(value, str):  # YAML reads "3e-3" as a string
            try:
                value = float(text)
            except ValueError:
                pass
        if self.kind is list and isinstance(value, str):  # "0.2,1.0" without brackets
            try:
                value = [float(v) for v in text.split(",")]
            except ValueError:
                pass
        return self.check(key, value, origin)


def _typed(kind: type, value: Any, item: type | None) -> tuple[bool, Any]:
    """(whether ``value`` is of ``kind``, the value with ints widened to floats where asked)."""
    if kind is bool:
        return isinstance(value, bool), value
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if kind is list:
        if not isinstance(value, list):
            return False, value
        items = [_typed(item, v, None) if item else (True, v) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if kind is dict:
        return isinstance(value, Mapping), dict(value) if isinstance(value, Mapping) else value
    return isinstance(value, kind), value


def _number(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _alternatives(choices: Iterable[Any]) -> str:
    shown = [repr(c) if isinstance(c, str) else str(c) for c in choices]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def spec_of_default(default: Any, **rules: Any) -> Spec:
    """The spec of a schema key whose default says its type (a list default: that many numbers)."""
    if isinstance(default, list):
        return Spec(list, item=float, length=len(default), **rules)
    return Spec(type(default), **rules)


def spec_of_hint(hint: Any, **rules: Any) -> Spec:
    """The spec of a dataclass field from its type hint (``int | None``, ``list[int]``, ``dict[str, Any]``)."""
    nullable = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        nullable, hint = len(args) < len(typing.get_args(hint)), args[0]
    origin = typing.get_origin(hint)
    if origin is list:
        return Spec(list, item=typing.get_args(hint)[0], nullable=nullable, **rules)
    if origin is dict:
        return Spec(dict, nullable=nullable, **rules)
    return Spec(hint, nullable=nullable, **rules)


def dataclass_specs(cls: type) -> dict[str, Spec]:
    """Every field's spec: its type hint plus the rules in its ``metadata["spec"]`` (choices, range)."""
    hints = typing.get_type_hints(cls)
    return {f.name: spec_of_hint(hints[f.name], **f.metadata.get("spec", {})) for f in dataclasses.fields(cls)}


# ----------------------------------------------------------------------------------------------
# Keys.
# ----------------------------------------------------------------------------------------------


def did_you_mean(word: Any, options: Iterable[Any]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options`` to ``word``, else ``""``."""
    names = [str(o) for o in options]
    close = difflib.get_close_matches(str(word), names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key(where: str, key: Any, allowed: Iterable[Any], noun: str = "key") -> ConfigError:
    """The error for a key outside the schema: ``<where>: unknown <noun> 'k' (did you mean 'x'?)``."""
    allowed = sorted(str(a) for a in allowed)
    hint = did_you_mean(key, allowed)
    if not hint and len(allowed) <= 20:
        hint = f"; allowed: {', '.join(allowed)}"
    return ConfigError(f"{where}: unknown {noun} {str(key)!r}{hint}")


def check_keys(section: Mapping, allowed: Iterable[Any], where: str, noun: str = "key") -> None:
    """Refuse the first key of ``section`` that is not ``allowed``."""
    allowed = set(allowed)
    for key in section:
        if key not in allowed:
            raise unknown_key(where, key, allowed, noun)


def mapping(value: Any, where: str) -> dict:
    """``value`` as a dict (None: empty); a ConfigError when it is not a mapping."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping, not {type(value).__name__}")
    return dict(value)


def flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``{"A": {"B": 1}}`` -> ``("A.B", 1)``."""
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, dotted + ".")
        else:
            yield dotted, value


# ----------------------------------------------------------------------------------------------
# Files.
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _document(path: Path, mtime_ns: int, size: int) -> Any:
    """A YAML file's content, parsed once per version of the file (a sweep's check reads each
    fine-tuning preset once per planned run)."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: byte 0x{error.object[error.start]:02x} at offset {error.start} is not UTF-8; "
                          "save the file as UTF-8") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``"KEY: old -> new"`` for every (nested, dotted) key whose value differs, in key order."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changes += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return changes


def deep_update(target: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into ``target`` key by key (nested mappings merge, anything else replaces)."""
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            deep_update(target[key], value)
        else:
            target[key] = value
    return target


def read_yaml(path: str | Path, what: str = "config file", _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML mapping merged over the file its ``_BASE_`` key names (relative to it), recursively.

    Raises:
        FileNotFoundError: ``path`` or a base does not exist ("<what> not found: ...").
        ConfigError: not valid YAML, not a mapping, a ``_BASE_`` that is not a file name, a cycle.
    """
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"_BASE_ cycle: {' -> '.join(str(p) for p in (*_seen, path))}")
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    stat = path.stat()
    data = copy.deepcopy(_document(path, stat.st_mtime_ns, stat.st_size))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} must be a mapping of keys, not {type(data).__name__}")
    base = data.pop("_BASE_", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: _BASE_ must be the file name of the base, got {base!r}")
    return deep_update(read_yaml(path.parent / base, what, (*_seen, path)), data)
