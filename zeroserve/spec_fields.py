"""Reading typed spec fields out of YAML mappings, one error message per bad field."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_DURATION_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")  # "-5s" parses: the bound says why not
_SIZE_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|K|M|G|T|k)?B?\s*$")
_SIZE_UNITS = {
    None: 1, "K": 1000, "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
    "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4,
}
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class FieldReader:
    """Reads typed fields out of a mapping, recording one error per bad field."""

    def __init__(self, errors: list[str], prefix: str, data: Any) -> None:
        self.errors = errors
        self.prefix = prefix
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            errors.append(f"{prefix} = {show(data)}, must be a mapping")
            data = {}
        self.data: Mapping[str, Any] = data
        self.used: set[str] = set()

    def path(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def fail(self, key: str, value: Any, rule: str) -> None:
        self.errors.append(f"{self.path(key)} = {show(value)}, {rule}")

    def raw(self, key: str) -> Any:
        self.used.add(key)
        return self.data.get(key)

    def has(self, key: str) -> bool:
        return key in self.data

    def child(self, key: str) -> FieldReader:
        return FieldReader(self.errors, self.path(key), self.raw(key))

    def string(self, key: str, default: str | None = None) -> str | None:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            self.fail(key, value, "must be a string")
            return default
        return str(value)

    def choice(self, key: str, options: tuple[str, ...], default: str) -> str:
        value = self.string(key, default)
        if value not in options:
            self.fail(key, value, "must be one of " + ", ".join(options))
            return default
        return value

    def number(self, key: str, default: float, *, gt: float | None = None, ge: float | None = None,
               le: float | None = None) -> float:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            try:
                value = float(str(value))
            except ValueError:
                self.fail(key, value, "must be a number")
                return default
        return self._bounded(key, float(value), default, gt=gt, ge=ge, le=le)

    def integer(self, key: str, default: int, *, ge: int | None = None, gt: int | None = None) -> int:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                value = int(value)
            else:
                self.fail(key, value, "must be an integer")
                return default
        return int(self._bounded(key, value, default, gt=gt, ge=ge, le=None))

    def duration(self, key: str, default: float, *, gt: float | None = None,
                 ge: float | None = 0.0) -> float:
        value = self.raw(key)
        if value is None:
            return default
        seconds = parse_duration(value)
        if seconds is None:
            self.fail(key, value, "must be a duration like 30s, 500ms, 5m or a number of seconds")
            return default
        return self._bounded(key, seconds, default, gt=gt, ge=ge, le=None)

    def size(self, key: str, default: int) -> int:
        value = self.raw(key)
        if value is None:
            return default
        size = parse_size(value)
        if size is None:
            self.fail(key, value, "must be a size like 100Mi, 2Gi or a number of bytes")
            return default
        if size < 0:
            self.fail(key, value, "must be >= 0")
            return default
        return size

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        self.fail(key, value, "must be true or false")
        return default

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.raw(key)
        if value is None:
            return ()
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
            self.fail(key, value, "must be a list of strings")
            return ()
        return tuple(str(v) for v in value)

    def mapping(self, key: str) -> dict[str, str]:
        value = self.raw(key)
        if value is None:
            return {}
        if isinstance(value, list):  # Kubernetes style: [{name, value}]
            out: dict[str, str] = {}
            for item in value:
                if not isinstance(item, Mapping) or "name" not in item:
                    self.fail(key, value, "must be a mapping or a list of {name, value}")
                    return {}
                out[str(item["name"])] = str(item.get("value", ""))
            return out
        if not isinstance(value, Mapping):
            self.fail(key, value, "must be a mapping of strings")
            return {}
        return {str(k): str(v) for k, v in value.items()}

    def _bounded(self, key: str, value: float, default: float, *, gt: float | None,
                 ge: float | None, le: float | None) -> float:
        shown = self.raw(key)  # as written: "-60s", not the -60 it parsed to
        if gt is not None and not value > gt:
            self.fail(key, shown, f"must be > {_num(gt)}")
            return default
        if ge is not None and not value >= ge:
            self.fail(key, shown, f"must be >= {_num(ge)}")
            return default
        if le is not None and not value <= le:
            self.fail(key, shown, f"must be <= {_num(le)}")
            return default
        return value

    def unknown(self) -> None:
        for key in self.data:
            if key not in self.used:
                self.errors.append(f"{self.path(str(key))}: unknown field")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def show(value: Any) -> str:
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, str):
        return value if value else '""'
    return repr(value) if not isinstance(value, int | bool) else str(value).lower()


def parse_duration(value: Any) -> float | None:
    """Seconds from `30s`, `500ms`, `5m`, `1h` or a plain number; None when unparsable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    m = _DURATION_RE.match(value)
    if m is None:
        return None
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def parse_size(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        return None
    m = _SIZE_RE.match(value)
    if m is None:
        return None
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
