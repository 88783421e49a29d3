"""A GGUF header reader that skips what listing models does not need.

Why not ``gguf.GGUFReader``: it builds numpy views for every element of every array, so a model with a
Llama-3-sized vocabulary (128k tokens, 280k merges) takes 12–14 s to open — per pull and per import, longer
than downloading it. This reader walks the same format (keys, values, tensor infos; see the GGUF spec in
ggml's docs) but records long arrays only by type and length, so that file takes milliseconds. Type names
and block sizes still come from the ``gguf`` package.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from mr_notebook.errors import InvalidModelFile

GGUF_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
#: Numeric arrays up to this length are read (per-layer head counts); longer ones only measured.
_SMALL_ARRAY = 4096
# GGUF value types: (struct format, size) of the scalar ones; 8 is a string, 9 an array.
_SCALARS = {
    0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
    6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
}  # fmt: skip
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class ArrayInfo:
    """A long array in the header (token lists, merges): its element type and length, not its items."""

    item_type: int
    count: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type_name: str
    n_elements: int
    #: Bytes of data and where they start in the file.
    n_bytes: int
    offset: int


@dataclass
class GGUFHeader:
    version: int
    fields: dict[str, Any] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)


class _Reader:
    def __init__(self, handle: BinaryIO, path: Path, size: int) -> None:
        self.handle, self.path, self.size = handle, path, size

    def take(self, count: int) -> bytes:
        data = self.handle.read(count)
        if len(data) != count:
            raise InvalidModelFile(f"{self.path} is a truncated GGUF file (its header ends early). Get it again.")
        return data

    def unpack(self, fmt: str, size: int) -> Any:
        return struct.unpack(fmt, self.take(size))[0]

    def count(self, what: str, unit: int = 1) -> int:
        value = int(self.unpack("<Q", 8))
        if value * unit > self.size:
            raise InvalidModelFile(f"{self.path} is a damaged GGUF file ({what} of {value} cannot fit in it).")
        return value

    def string(self) -> str:
        raw = self.take(self.count("a string"))
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        for _ in range(count):
            self.handle.seek(self.count("a string"), 1)

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.unpack(*_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise InvalidModelFile(f"{self.path} is a damaged GGUF file (unknown value type {kind}).")
        item_type = int(self.unpack("<I", 4))
        count = self.count("an array", 1)
        if item_type in _SCALARS and count <= _SMALL_ARRAY:
            return [self.value(item_type) for _ in range(count)]
        if item_type in _SCALARS:
            self.handle.seek(count * _SCALARS[item_type][1], 1)
        elif item_type == _STRING:
            self.skip_strings(count)
        else:
            raise InvalidModelFile(f"{self.path} holds an array of type {item_type}, which GGUF does not define.")
        return ArrayInfo(item_type, count)


def read_header(path: Path) -> GGUFHeader:
    """Keys, values (long arrays as :class:`ArrayInfo`) and tensor infos of a GGUF file."""
    import gguf

    size = path.stat().st_size
    with open(path, "rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise InvalidModelFile(
                f"{path} is not a GGUF model file (it does not start with 'GGUF'). "
                "mr-notebook runs llama.cpp GGUF models; convert others with llama.cpp's convert_hf_to_gguf.py."
            )
        reader = _Reader(handle, path, size)
        version = int(reader.unpack("<I", 4))
        if version not in (2, 3):
            raise InvalidModelFile(f"{path} is GGUF version {version}; llama.cpp reads versions 2 and 3.")
        n_tensors = reader.count("a tensor count", 8)
        n_fields = reader.count("a key count", 8)
        header = GGUFHeader(version)
        for _ in range(n_fields):
            key = reader.string()
            header.fields[key] = reader.value(int(reader.unpack("<I", 4)))
        raw_tensors = []
        for _ in range(n_tensors):
            name = reader.string()
            dims = tuple(int(reader.unpack("<Q", 8)) for _ in range(int(reader.unpack("<I", 4))))
            raw_tensors.append((name, dims, int(reader.unpack("<I", 4)), int(reader.unpack("<Q", 8))))
        alignment = int(header.fields.get("general.alignment", _DEFAULT_ALIGNMENT)) or _DEFAULT_ALIGNMENT
        data_start = -(-handle.tell() // alignment) * alignment
    for name, dims, kind, offset in raw_tensors:
        try:
            quant = gguf.GGMLQuantizationType(kind)
        except ValueError:
            raise InvalidModelFile(f"{path}: tensor {name!r} has type {kind}, unknown to this gguf version.") from None
        block, type_size = gguf.GGML_QUANT_SIZES[quant]
        elements = 1
        for dim in dims:
            elements *= dim
        header.tensors.append(
            TensorInfo(name, dims, quant.name, elements, elements * type_size // block, data_start + offset)
        )
    return header
