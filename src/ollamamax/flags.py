"""Feature flags: named choices between implementations, rolled out gradually, rolled back in one call.

A flag has variants and a default. Its *setting* says which variant serves which requests:

    Setting(variant="round_robin", percent=10, base="intelligent")
        10% of requests get round_robin, the other 90% intelligent

- Which requests fall in the share is a stable hash of a request key (CRC-32 of the key,
  seeded with the CRC-32 of the flag's name; the same in every process and after every
  restart, unlike Python's `hash`), in buckets of 0.01%. Raising the share keeps the requests
  already in it (a bucket below 10% is below 20%).
- `set` records the previous setting in the flag's history; `rollback` returns to it in one
  call (and again to the one before, as far as the history goes).
- A flag that switches a whole component (not per request) takes percent 100 only.
- With a `FlagFile`, every change is written to disk (atomically) and read back at start, so
  settings and their histories survive restarts.

Pure but for `FlagFile`: no clock, no sockets; listeners hear about every change.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ollamamax.errors import BadRequest, NotFound, RequestError

log = logging.getLogger(__name__)

BUCKETS = 10_000  # a share is resolved to 0.01%
HISTORY = 32  # settings kept per flag for rollback


class NothingToRollBack(RequestError):
    """409: the flag has no earlier setting."""

    status = 409


@dataclass(frozen=True, slots=True)
class FlagDef:
    name: str
    variants: tuple[str, ...]
    default: str
    per_request: bool = True  # False: the variant switches a whole component (percent 100)
    help: str = ""


@dataclass(frozen=True, slots=True)
class Setting:
    variant: str  # what the rolled-out share of requests gets
    percent: float = 100.0
    base: str = ""  # what the other requests get (the variant itself at 100%)

    def as_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "percent": self.percent, "base": self.base}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Setting:
        variant = str(data["variant"])
        return cls(variant, float(data.get("percent", 100.0)), str(data.get("base") or variant))


def _salt(name: str) -> int:
    return zlib.crc32(name.encode())


class Flag:
    """One flag's definition, setting and history."""

    __slots__ = ("_only", "_salt", "_threshold", "definition", "history", "setting")

    def __init__(self, definition: FlagDef) -> None:
        self.definition = definition
        self.history: list[Setting] = []
        self._salt = _salt(definition.name)
        self._apply(Setting(definition.default, 100.0, definition.default))

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def split(self) -> bool:
        """Some requests get one variant, the rest another."""
        return self._only is None

    @property
    def active(self) -> tuple[str, ...]:
        """The variants some request may get now."""
        s = self.setting
        return (self._only,) if self._only is not None else (s.base, s.variant)

    @property
    def current(self) -> str:
        """The variant every request gets, or (split) the one most requests get."""
        s = self.setting
        return self._only if self._only is not None else (
            s.variant if s.percent >= 50 else s.base)

    def pick(self, key: bytes) -> str:
        """The variant for a request with this key."""
        only = self._only
        if only is not None:
            return only
        if zlib.crc32(key, self._salt) % BUCKETS < self._threshold:
            return self.setting.variant
        return self.setting.base

    def _apply(self, setting: Setting) -> None:
        self.setting = setting
        self._threshold = round(setting.percent * BUCKETS / 100)
        if self._threshold >= BUCKETS or setting.variant == setting.base:
            self._only: str | None = setting.variant
        elif self._threshold <= 0:
            self._only = setting.base
        else:
            self._only = None

    def describe(self) -> dict[str, Any]:
        d = self.definition
        return {"name": d.name, **self.setting.as_dict(), "default": d.default,
                "variants": list(d.variants), "per_request": d.per_request, "help": d.help,
                "history": [s.as_dict() for s in reversed(self.history)]}


Listener = Callable[[Flag], None]


class Flags:
    def __init__(self, definitions: Iterable[FlagDef], store: FlagFile | None = None,
                 history: int = HISTORY) -> None:
        self._flags = {d.name: Flag(d) for d in definitions}
        self.store = store
        self.history_limit = history
        self._listeners: list[Listener] = []
        if store is not None:
            self._restore(store.load())

    def __contains__(self, name: object) -> bool:
        return name in self._flags

    def __getitem__(self, name: str) -> Flag:
        flag = self._flags.get(name)
        if flag is None:
            raise NotFound(f"unknown flag {name!r}; flags: {', '.join(self._flags)}")
        return flag

    def __iter__(self) -> Any:
        return iter(self._flags.values())

    def variant(self, name: str) -> str:
        """The variant of a component flag (or what most requests get of a per-request one)."""
        return self[name].current

    def subscribe(self, listener: Listener) -> None:
        """`listener(flag)` after every change of any flag."""
        self._listeners.append(listener)

    def set(self, name: str, variant: str, percent: float = 100.0) -> Setting:
        """Give `percent` of requests `variant`, the rest what most requests had."""
        flag = self[name]
        d = flag.definition
        if variant not in d.variants:
            raise BadRequest(f"flag {name!r} has no variant {variant!r}; "
                             f"variants: {', '.join(d.variants)}")
        if isinstance(percent, bool) or not isinstance(percent, int | float) or \
                not 0 <= percent <= 100:
            raise BadRequest(f"percent must be a number from 0 to 100, not {percent!r}")
        if not d.per_request and percent != 100:
            raise BadRequest(f"flag {name!r} switches a whole component at once; "
                             "percent must be 100")
        old = flag.setting
        base = old.variant if flag._only == old.variant else old.base
        new = Setting(variant, float(percent), variant if percent >= 100 else base)
        flag.history.append(old)
        del flag.history[:-self.history_limit]
        self._changed(flag, new)
        return new

    def rollback(self, name: str) -> Setting:
        """Return to the setting before the last change."""
        flag = self[name]
        if not flag.history:
            raise NothingToRollBack(f"flag {name!r} has no earlier setting to roll back to")
        previous = flag.history.pop()
        self._changed(flag, previous)
        return previous

    def describe(self) -> list[dict[str, Any]]:
        return [flag.describe() for flag in self._flags.values()]

    def _changed(self, flag: Flag, setting: Setting) -> None:
        flag._apply(setting)
        log.info("flag %s: %s", flag.name, _sentence(setting))
        if self.store is not None:
            self.store.save(self._state())
        for listener in self._listeners:
            listener(flag)

    def _state(self) -> dict[str, Any]:
        return {"version": 1, "flags": {
            f.name: {**f.setting.as_dict(), "history": [s.as_dict() for s in f.history]}
            for f in self._flags.values()
            if f.history or f.setting.variant != f.definition.default}}

    def _restore(self, state: dict[str, Any]) -> None:
        for name, data in (state.get("flags") or {}).items():
            flag = self._flags.get(name)
            try:
                settings = [Setting.from_dict(s) for s in data.get("history", ())]
                settings.append(Setting.from_dict(data))
            except (KeyError, TypeError, ValueError, AttributeError):
                log.warning("flag %s: unreadable saved setting ignored: %r", name, data)
                continue
            if flag is None or not all(_valid(flag.definition, s) for s in settings):
                log.warning("flag %s: saved setting ignored (unknown flag or variant): %r",
                            name, data)
                continue
            flag.history = settings[:-1][-self.history_limit:]
            flag._apply(settings[-1])
            log.info("flag %s: %s (saved)", name, _sentence(settings[-1]))


def _valid(d: FlagDef, s: Setting) -> bool:
    return s.variant in d.variants and s.base in d.variants and (
        0 <= s.percent <= 100 if d.per_request else s.percent == 100)


def _sentence(s: Setting) -> str:
    if s.percent >= 100 or s.variant == s.base:
        return f"{s.variant} for every request"
    return f"{s.variant} for {s.percent:g}% of requests, {s.base} for the rest"


class FlagFile:
    """Flag settings in a JSON file, replaced atomically on every change."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()

    def load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("flags file %s unreadable, starting from defaults: %s", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.path)
