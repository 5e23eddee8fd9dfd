"""Hostile model folders: malformed safetensors headers, configs and indexes, and pickles, are refused
with one CompressError (never a traceback, never code run). Each malformed header is also checked
against the safetensors library itself, which must refuse it too."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from compress.checkpoint.reader import Checkpoint, read_safetensors_header
from compress.errors import CompressError

GOOD = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4)}


def _folder(tmp_path: Path, name: str = "m") -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 1}))
    return d


def _with_header(path: Path, edit) -> Path:
    """Rewrite the header of a valid safetensors file through `edit(header)`; the data is kept."""
    save_file(GOOD, str(path))
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header = edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    return path


def _set(name, key, value):
    def edit(h):
        h[name][key] = value
        return h
    return edit


HEADERS = {
    "dtype is a list": _set("a", "dtype", ["F32"]),
    "offsets are strings": _set("a", "data_offsets", ["0", "24"]),
    "shape is null": _set("a", "shape", None),
    "negative shape": _set("a", "shape", [-2, -3]),
    "overlapping offsets": _set("b", "data_offsets", [0, 16]),
    "wrong byte size": _set("a", "shape", [3, 3]),
    "metadata not strings": lambda h: {**h, "__metadata__": {"format": 1}},
    "entry is a number": lambda h: {**h, "a": 7},
    "header is a list": lambda h: [h],
}


@pytest.mark.parametrize("case", list(HEADERS))
def test_malformed_header_is_one_error(tmp_path, case):
    d = _folder(tmp_path)
    f = _with_header(d / "model.safetensors", HEADERS[case])
    with pytest.raises(Exception):  # noqa: B017 - the reference: safetensors refuses the file too
        with safe_open(str(f), framework="pt"):
            pass
    with pytest.raises(CompressError, match="corrupt safetensors file") as e:
        Checkpoint(d)
    assert "\n" not in str(e.value)


def test_truncated_names_the_tensor(tmp_path):
    f = tmp_path / "t.safetensors"
    save_file(GOOD, str(f))
    f.write_bytes(f.read_bytes()[:-4])
    with pytest.raises(CompressError, match=r"truncated safetensors file .* tensor 'b' ends at byte 40"):
        read_safetensors_header(f)


def test_trailing_garbage_is_corrupt_not_truncated(tmp_path):
    f = tmp_path / "t.safetensors"
    save_file(GOOD, str(f))
    f.write_bytes(f.read_bytes() + b"\0" * 8)
    with pytest.raises(CompressError, match="corrupt safetensors file"):
        read_safetensors_header(f)


def test_valid_file_still_reads(tmp_path):
    d = _folder(tmp_path)
    save_file(GOOD, str(d / "model.safetensors"))
    ck = Checkpoint(d)
    assert ck.info("a").shape == (2, 3) and torch.equal(ck.get("a"), GOOD["a"])


@pytest.mark.parametrize("config", ["[1, 2]", '"llama"', "3", "null"])
def test_config_not_an_object(tmp_path, config):
    d = _folder(tmp_path)
    save_file(GOOD, str(d / "model.safetensors"))
    (d / "config.json").write_text(config)
    with pytest.raises(CompressError, match="invalid config.json .* JSON object is expected"):
        Checkpoint(d)


@pytest.mark.parametrize("weight_map,message", [
    (["model.safetensors"], "weight_map must map"),
    ({"a": 3}, "weight_map must map"),
    ({"a": "../outside.safetensors"}, "is not a file name"),
    ({"a": "/etc/passwd"}, "is not a file name"),
])
def test_bad_index(tmp_path, weight_map, message):
    d = _folder(tmp_path)
    save_file(GOOD, str(d / "model-00001-of-00001.safetensors"))
    save_file(GOOD, str(tmp_path / "outside.safetensors"))
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CompressError, match=message):
        Checkpoint(d)


@pytest.mark.parametrize("payload", [[torch.zeros(2)], {"a": [torch.zeros(2)]}, {3: torch.zeros(2)}])
def test_bin_not_a_state_dict(tmp_path, payload):
    d = _folder(tmp_path)
    torch.save(payload, d / "pytorch_model.bin")
    with pytest.raises(CompressError, match="not a mapping of tensor names to tensors"):
        Checkpoint(d)


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_bin_pickle_payload_never_runs(tmp_path):
    d = _folder(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"a": torch.zeros(2), "x": _Payload(str(marker))}, d / "pytorch_model.bin")
    with pytest.raises(CompressError, match="weights_only"):
        Checkpoint(d)
    assert not marker.exists()


def test_side_files_never_return_code(tmp_path):
    d = _folder(tmp_path)
    save_file(GOOD, str(d / "model.safetensors"))
    for name in ("tokenizer.json", "modeling_compress_pruned.py", "modeling_llama.py"):
        (d / name).write_text("{}")
    assert [p.name for p in Checkpoint(d).side_files()] == ["tokenizer.json"]
