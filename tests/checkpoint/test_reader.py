"""Lazy reading of real HF folders (single file, sharded, legacy .bin) and clear errors on bad ones."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from compress.checkpoint import Checkpoint
from compress.errors import CompressError
from tests.fixtures import make_tiny_model


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    src = make_tiny_model(tmp_path_factory.mktemp("m") / "single", "llama")
    model = AutoModelForCausalLM.from_pretrained(str(src))
    out = tmp_path_factory.mktemp("m") / "sharded"
    model.save_pretrained(str(out), max_shard_size="100KB")
    return src, out


def test_names_shapes_dtypes_without_reading(tiny_llama):
    ckpt = Checkpoint(tiny_llama)
    ref = load_file(str(tiny_llama / "model.safetensors"))
    assert set(ckpt.names()) == set(ref)
    for name, t in ref.items():
        info = ckpt.info(name)
        assert info.shape == tuple(t.shape) and info.dtype == t.dtype
        assert info.nbytes == t.numel() * t.element_size()
        assert torch.equal(ckpt.get(name), t)
    assert ckpt.config["model_type"] == "llama"
    assert {p.name for p in ckpt.side_files()} >= {"tokenizer.json", "tokenizer_config.json"}


def test_sharded_matches_single(sharded):
    single, multi = sharded
    a, b = Checkpoint(single), Checkpoint(multi)
    assert len(b.files()) > 1
    assert set(a.names()) == set(b.names())
    for n in a.names():
        assert torch.equal(a.get(n), b.get(n))


def test_legacy_bin_weights_only(tmp_path, tiny_llama):
    out = tmp_path / "bin"
    out.mkdir()
    shutil.copy(tiny_llama / "config.json", out)
    sd = load_file(str(tiny_llama / "model.safetensors"))
    torch.save(sd, out / "pytorch_model.bin")
    ckpt = Checkpoint(out)
    assert ckpt.format == "bin"
    assert torch.equal(ckpt.get("model.norm.weight"), sd["model.norm.weight"])


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_legacy_bin_refuses_pickled_objects(tmp_path, tiny_llama):
    out = tmp_path / "evil"
    out.mkdir()
    shutil.copy(tiny_llama / "config.json", out)
    torch.save({"x": _Evil()}, out / "pytorch_model.bin")
    with pytest.raises(CompressError, match="weights_only"):
        Checkpoint(out)


def test_missing_folder(tmp_path):
    with pytest.raises(CompressError, match="not found"):
        Checkpoint(tmp_path / "nope")


def test_no_config(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(CompressError, match="no config.json"):
        Checkpoint(tmp_path / "m")


def test_truncated_safetensors(tmp_path, tiny_llama):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_llama, bad)
    f = bad / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 100])
    with pytest.raises(CompressError, match="truncated"):
        Checkpoint(bad)


def test_corrupt_header(tmp_path, tiny_llama):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_llama, bad)
    f = bad / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[10:20] = b"\x00" * 10
    f.write_bytes(bytes(data))
    with pytest.raises(CompressError, match="corrupt"):
        Checkpoint(bad)


def test_index_names_missing_shard(tmp_path, sharded):
    _, multi = sharded
    bad = tmp_path / "bad"
    shutil.copytree(multi, bad)
    index = json.loads((bad / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[-1]
    (bad / victim).unlink()
    with pytest.raises(CompressError, match="missing shard"):
        Checkpoint(bad)


def test_gguf_path_points_to_convert(tmp_path):
    with pytest.raises(CompressError, match="compress convert"):
        Checkpoint(tmp_path / "x.gguf")


def test_bf16_tensor_via_safetensors(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    t = torch.randn(3, 3).to(torch.bfloat16)
    save_file({"w": t}, str(tmp_path / "model.safetensors"))
    assert torch.equal(Checkpoint(tmp_path).get("w"), t)
