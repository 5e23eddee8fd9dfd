"""Every output folder carries a model card; no writer ever writes a NaN/Inf tensor; both dtype spellings."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from compress.checkpoint import TensorSpec, save_checkpoint
from compress.cli import main
from compress.errors import CompressError


def _save(out, tensor, **kw):
    spec = [TensorSpec("w", tuple(tensor.shape), tensor.dtype)]
    return save_checkpoint(out, spec, lambda w: w.write("w", tensor), config={"model_type": "x"}, command="test", **kw)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_tensor_is_refused_and_nothing_written(tmp_path, bad):
    t = torch.ones(4, 3)
    t[2, 1] = bad
    with pytest.raises(CompressError, match=r"tensor w has 1 NaN/Inf values"):
        _save(tmp_path / "out", t)
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left either


def test_integer_tensors_and_finite_bf16_pass(tmp_path):
    _save(tmp_path / "a", torch.arange(6).reshape(2, 3))
    _save(tmp_path / "b", torch.full((2, 2), 3.0e38).to(torch.bfloat16))  # large but finite in bf16


def test_model_card_front_matter_and_sections(tmp_path):
    src = tmp_path / "base-model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    out = _save(tmp_path / "out", torch.zeros(2), inputs=[src], method="ties", tags=("merge",),
                report="| a | b |\n|---|---|\n| 1 | 2 |", recipe={"merge_method": "ties"})
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["base_model"] == "base-model" and meta["library_name"] == "transformers"
    assert meta["tags"] == ["compress", "merge", "ties"]
    assert "# out" in text and "merge_method: ties" in text and "| 1 | 2 |" in text
    record = json.loads((out / "compress.json").read_text())
    assert record["versions"]["torch"] in text


@pytest.mark.parametrize("spelling", ["float32", "FP32", "bfloat16", "bf16", "float16"])
def test_convert_accepts_both_dtype_spellings(tmp_path, spelling, capsys):
    # the option parses before any work: an existing file that is not GGUF gives the GGUF error, not a dtype error
    f = tmp_path / "x.gguf"
    f.write_bytes(b"nope")
    assert main(["convert", str(f), "-o", str(tmp_path / "o"), "--dtype", spelling]) == 1
    assert "not a GGUF file" in capsys.readouterr().err


def test_unknown_dtype_is_one_line(tmp_path, capsys):
    f = tmp_path / "x.gguf"
    f.write_bytes(b"nope")
    assert main(["convert", str(f), "-o", str(tmp_path / "o"), "--dtype", "int8"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "'int8' is not one of" in err and "bfloat16" in err
