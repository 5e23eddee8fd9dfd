"""The streaming writer produces standard safetensors (checked with the safetensors library itself),
and output folders are atomic: refused, replaced or left untouched as the options say."""

from __future__ import annotations

import errno
import json
import threading

import pytest
import torch
from safetensors.torch import load_file

from compress.checkpoint import ShardedWriter, TensorSpec, atomic_dir, save_checkpoint, write_tensors
from compress.checkpoint import writer as writer_mod
from compress.checkpoint.writer import parse_size
from compress.errors import CompressError


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(7, 5, generator=g),
        "b.weight": torch.randn(300, generator=g).to(torch.bfloat16),
        "c.bias": torch.randn(3, 2, 2, generator=g).to(torch.float16),
        "d.ids": torch.arange(11, dtype=torch.int64),
        "e.scalar": torch.tensor(3.5),
        "f.empty": torch.zeros(0, 4),
    }


def test_single_file_round_trip(tmp_path):
    ts = _tensors()
    files = write_tensors(tmp_path, ts.items())
    assert [f.name for f in files] == ["model.safetensors"]
    back = load_file(str(files[0]))
    assert set(back) == set(ts)
    for k, v in ts.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v)


def test_sharded_out_of_order_and_threaded(tmp_path):
    ts = _tensors()
    specs = [TensorSpec(k, tuple(v.shape), v.dtype) for k, v in ts.items()]
    w = ShardedWriter(tmp_path, specs, max_shard_size=200)
    threads = [threading.Thread(target=w.write, args=(k, ts[k])) for k in reversed(list(ts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    files = w.close()
    assert len(files) > 1
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(ts)
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in ts.values())
    for k, v in ts.items():
        back = load_file(str(tmp_path / index["weight_map"][k]))
        assert torch.equal(back[k], v)


def test_writer_rejects_wrong_shape_and_missing(tmp_path):
    w = ShardedWriter(tmp_path, [TensorSpec("x", (2,), torch.float32), TensorSpec("y", (1,), torch.float32)])
    with pytest.raises(ValueError, match="planned"):
        w.write("x", torch.zeros(3))
    w.write("x", torch.zeros(2))
    with pytest.raises(ValueError, match="never written"):
        w.close()


@pytest.mark.parametrize("text,expected", [("5GB", 5 * 10**9), ("500MB", 5 * 10**8), ("2GiB", 2 * 1024**3), ("1234", 1234)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_parse_size_bad():
    with pytest.raises(CompressError):
        parse_size("lots")


def _save(out, produce_fail=None, force=False, inputs=()):
    t = torch.ones(4, 4)

    def produce(w):
        if produce_fail is not None:
            raise produce_fail
        w.write("w", t)

    return save_checkpoint(out, [TensorSpec("w", (4, 4), torch.float32)], produce, config={"model_type": "x"},
                           force=force, inputs=inputs)


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_atomic_refuses_existing_without_force(tmp_path):
    out = tmp_path / "out"
    _save(out)
    (out / "keep.txt").write_text("precious")
    with pytest.raises(CompressError, match="--force"):
        _save(out)
    assert (out / "keep.txt").read_text() == "precious"
    _save(out, force=True)
    assert not (out / "keep.txt").exists()
    assert load_file(str(out / "model.safetensors"))["w"].sum() == 16
    assert json.loads((out / "compress.json").read_text())["tool"] == "compress"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_leaves_nothing(tmp_path, exc):
    out = tmp_path / "out"
    with pytest.raises(type(exc)):
        _save(out, produce_fail=exc)
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_failure_with_force_keeps_old_output(tmp_path):
    out = tmp_path / "out"
    _save(out)
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        _save(out, produce_fail=RuntimeError("x"), force=True)
    assert (out / "old.txt").read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_disk_full_is_a_clean_error(tmp_path, monkeypatch):
    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_mod, "_pwrite", full)
    out = tmp_path / "out"
    with pytest.raises(CompressError, match="disk full"):
        _save(out)
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_output_inside_input_refused(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    with pytest.raises(CompressError, match="inside the input"):
        _save(src / "sub", inputs=[src])
    with pytest.raises(CompressError, match="inside the input"):
        _save(src, inputs=[src], force=True)


def test_atomic_dir_existing_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CompressError, match="is a file"):
        with atomic_dir(f):
            pass
