"""Read a GGUF file's metadata quickly.

`gguf.GGUFReader` parses every array eagerly: 5.2 s for SmolLM2's 49,152-token vocabulary on
this machine. Importing a model and showing it need only the scalar keys, the lengths of the
arrays and the tensor sizes, which this reader gets in milliseconds by seeking over the rest.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ollamamax.errors import BadRequest

GGUF_MAGIC = b"GGUF"

# GGUF value types -> struct format of one element (strings and arrays handled apart)
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_SMALL_ARRAY = 64  # arrays up to this length are kept; longer ones are reported by length

# llama.cpp's file types (general.file_type), as Ollama names the quantisation level
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
}


@dataclass(slots=True)
class GGUFInfo:
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    array_lengths: dict[str, int] = field(default_factory=dict)
    parameter_count: int = 0

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def file_type(self) -> str:
        ft = self.metadata.get("general.file_type")
        return FILE_TYPES.get(ft, "") if isinstance(ft, int) else ""

    @property
    def parameter_size(self) -> str:
        """Like Ollama: ``135M``, ``8.0B``."""
        n = self.parameter_count
        if n >= 1_000_000_000:
            return f"{n / 1e9:.1f}B"
        if n >= 1_000_000:
            return f"{round(n / 1e6)}M"
        return f"{round(n / 1e3)}K" if n >= 1000 else str(n)

    @property
    def context_length(self) -> int | None:
        value = self.metadata.get(f"{self.architecture}.context_length")
        return value if isinstance(value, int) else None

    @property
    def chat_template(self) -> str:
        return str(self.metadata.get("tokenizer.chat_template", ""))


def read(path: str | Path) -> GGUFInfo:
    """Read the metadata of the GGUF file at `path`; `BadRequest` when it is not one."""
    with open(path, "rb") as f:
        try:
            return _read(f)
        except (struct.error, UnicodeDecodeError, ValueError) as exc:
            raise BadRequest(f"{path}: not a valid GGUF file ({exc})") from None


def _read(f: BinaryIO) -> GGUFInfo:
    if f.read(4) != GGUF_MAGIC:
        raise ValueError("bad magic")
    (version,) = _unpack(f, "I")
    if version < 2:
        raise ValueError(f"GGUF version {version} is not supported")
    n_tensors, n_kv = _unpack(f, "QQ")
    info = GGUFInfo(version)
    for _ in range(n_kv):
        key = _string(f)
        (vtype,) = _unpack(f, "I")
        if vtype == _ARRAY:
            (etype,), (count,) = _unpack(f, "I"), _unpack(f, "Q")
            info.array_lengths[key] = count
            items = _array(f, etype, count)
            if items is not None:
                info.metadata[key] = items
        else:
            info.metadata[key] = _value(f, vtype)
    for _ in range(n_tensors):
        _string(f)
        (n_dims,) = _unpack(f, "I")
        dims = _unpack(f, "Q" * n_dims)
        f.seek(4 + 8, 1)  # type, offset
        count = 1
        for d in dims:
            count *= d
        info.parameter_count += count
    return info


def _unpack(f: BinaryIO, fmt: str) -> tuple[Any, ...]:
    size = struct.calcsize("<" + fmt)
    return struct.unpack("<" + fmt, f.read(size))


def _string(f: BinaryIO) -> str:
    (n,) = _unpack(f, "Q")
    if n > 1 << 26:
        raise ValueError("string too long")
    return f.read(n).decode("utf-8")


def _value(f: BinaryIO, vtype: int) -> Any:
    if vtype == _STRING:
        return _string(f)
    fmt = _SCALAR.get(vtype)
    if fmt is None:
        raise ValueError(f"unknown value type {vtype}")
    return _unpack(f, fmt)[0]


def _array(f: BinaryIO, etype: int, count: int) -> list[Any] | None:
    """Read a small array; skip a large one and return None."""
    if count <= _SMALL_ARRAY:
        return [_value(f, etype) for _ in range(count)]
    if etype == _STRING:
        for _ in range(count):
            (n,) = _unpack(f, "Q")
            f.seek(n, 1)
    elif etype in _SCALAR:
        f.seek(struct.calcsize("<" + _SCALAR[etype]) * count, 1)
    else:
        raise ValueError(f"unsupported array element type {etype}")
    return None
