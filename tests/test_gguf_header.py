"""The fast GGUF header reader agrees with the gguf package's reader and refuses damaged headers."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import pytest

from mr_notebook.errors import InvalidModelFile
from mr_notebook.store.gguf_header import ArrayInfo, read_header
from mr_notebook.testing import TinyModelFactory


@pytest.mark.parametrize("splits", [1, 3])
def test_agrees_with_gguf_reader(tiny_model_factory: TinyModelFactory, splits: int) -> None:
    first = tiny_model_factory(splits=splits)
    paths = [first] if splits == 1 else sorted(first.parent.glob(first.name.replace("-00001-", "-*-")))
    for path in paths:
        ours, theirs = read_header(path), gguf.GGUFReader(path)
        for key, item in theirs.fields.items():
            if key.startswith("GGUF."):
                continue
            value = ours.fields[key]
            if isinstance(value, ArrayInfo):
                assert value.count == len(item.data)
            else:
                assert value == item.contents(), key
        assert len(ours.fields) == len([k for k in theirs.fields if not k.startswith("GGUF.")])
        assert [(t.name, t.type_name, t.n_elements, t.n_bytes, t.offset) for t in ours.tensors] == [
            (t.name, t.tensor_type.name, int(t.n_elements), int(t.n_bytes), int(t.data_offset)) for t in theirs.tensors
        ]
        assert [list(t.shape) for t in ours.tensors] == [[int(d) for d in t.shape] for t in theirs.tensors]


def test_token_lists_are_measured_not_read(tiny_model: Path) -> None:
    tokens = read_header(tiny_model).fields["tokenizer.ggml.tokens"]
    assert isinstance(tokens, ArrayInfo) and tokens.count > 256


def test_damaged_headers_are_refused(tiny_model: Path, tmp_path: Path) -> None:
    data = tiny_model.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:200])
    with pytest.raises(InvalidModelFile, match="truncated"):
        read_header(cut)
    huge = tmp_path / "huge.gguf"
    huge.write_bytes(data[:8] + struct.pack("<Q", 2**40) + data[16:])  # tensor count beyond the file
    with pytest.raises(InvalidModelFile, match="damaged"):
        read_header(huge)
    future = tmp_path / "v9.gguf"
    future.write_bytes(data[:4] + struct.pack("<I", 9) + data[8:])
    with pytest.raises(InvalidModelFile, match="version 9"):
        read_header(future)
