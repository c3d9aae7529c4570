"""API keys: made once, stored hashed, looked up by hash.

A key is ``omx_`` + 43 random URL-safe characters (256 bits from `secrets`). Only its SHA-256
is stored: a key that random cannot be guessed from its hash, so a slow password hash (bcrypt,
argon2) would add cost per request and no safety. A request's key is hashed and found in a
dict by its digest, then the digests are compared with `hmac.compare_digest`: knowing how long
a lookup took tells nothing about any other key's hash.

The keys file is JSON, written atomically with mode 0600 (readable by its owner only):

    {"keys": [{"name": "alice", "role": "user", "sha256": "...", "rps": 5.0,
               "tokens_per_min": 20000, "tokens_per_day": 0, "created": "2026-11-26T21:40:00Z"}]}
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path

import msgspec

from ollamamax.errors import ConfigError

PREFIX = "omx_"
ROLES = ("user", "admin")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One key as stored: never the key itself."""

    name: str
    role: str = "user"
    sha256: str
    rps: float = 0.0  # requests per second (0: unlimited)
    burst: float = 0.0  # requests at once above the rate (0: max(1, rps))
    tokens_per_min: float = 0.0  # prompt + generated tokens per minute (0: unlimited)
    tokens_per_day: float = 0.0  # a rolling daily quota of tokens (0: none)
    created: str = ""

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    def limits(self) -> str:
        """The limits in a few words, for `ollamamax keys list`."""
        parts = [f"{self.rps:g} req/s" if self.rps else "",
                 f"{self.tokens_per_min:g} tok/min" if self.tokens_per_min else "",
                 f"{self.tokens_per_day:g} tok/day" if self.tokens_per_day else ""]
        return ", ".join(p for p in parts if p) or "none"


class _File(msgspec.Struct):
    keys: list[KeyRecord] = []


_decode = msgspec.json.Decoder(_File).decode
_encode = msgspec.json.Encoder().encode


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"key name {name!r}: use 1-64 letters, digits and . _ @ - "
                          "(starting with a letter or digit)")
    return name


class KeySet:
    """The keys a gateway accepts, by digest (immutable: a reload builds a new one)."""

    __slots__ = ("by_digest", "records")

    def __init__(self, records: list[KeyRecord]) -> None:
        self.records = records
        self.by_digest = {r.sha256: r for r in records}

    def __len__(self) -> int:
        return len(self.records)

    def find(self, key: str) -> KeyRecord | None:
        """The record of `key`, or None (constant-time comparison of the digests)."""
        wanted = digest(key)
        record = self.by_digest.get(wanted)
        if record is None or not hmac.compare_digest(record.sha256, wanted):
            return None
        return record


def read(path: str | os.PathLike[str]) -> list[KeyRecord]:
    """The records in the keys file ([] when it does not exist yet)."""
    try:
        data = Path(path).expanduser().read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"keys file {path}: {exc.strerror or exc}") from None
    if not data.strip():
        return []
    try:
        return _decode(data).keys
    except msgspec.DecodeError as exc:
        raise ConfigError(f"keys file {path} is not a keys file: {exc}") from None


def write(path: str | os.PathLike[str], records: list[KeyRecord]) -> None:
    """Replace the keys file atomically, readable and writable by its owner only."""
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(_encode(_File(records)) + b"\n")
    os.chmod(tmp, 0o600)  # an existing temporary file keeps its mode through O_CREAT
    os.replace(tmp, target)


def add(path: str | os.PathLike[str], name: str, role: str = "user", *, rps: float = 0.0,
        burst: float = 0.0, tokens_per_min: float = 0.0, tokens_per_day: float = 0.0,
        ) -> str:
    """Make a key called `name`, store its hash, and return the key (shown once)."""
    check_name(name)
    if role not in ROLES:
        raise ConfigError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    if min(rps, burst, tokens_per_min, tokens_per_day) < 0:
        raise ConfigError("limits must be >= 0 (0: unlimited)")
    records = read(path)
    if any(r.name == name for r in records):
        raise ConfigError(f"a key called {name!r} exists; revoke it first")
    key = new_key()
    records.append(KeyRecord(name=name, role=role, sha256=digest(key), rps=rps, burst=burst,
                             tokens_per_min=tokens_per_min, tokens_per_day=tokens_per_day,
                             created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
    write(path, records)
    return key


def revoke(path: str | os.PathLike[str], name: str) -> None:
    records = read(path)
    kept = [r for r in records if r.name != name]
    if len(kept) == len(records):
        raise ConfigError(f"no key called {name!r}")
    write(path, kept)
