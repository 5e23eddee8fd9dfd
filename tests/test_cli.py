"""The command line: shared conventions, --json, and one-line errors (no traceback, nothing written)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from compress.cli import main


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_json(tiny_llama, capsys):
    code, out, err = run(["inspect", str(tiny_llama), "--json"], capsys)
    assert code == 0
    info = json.loads(out)
    assert info["family"] == "llama" and info["layers"] == 4 and info["block_map"] == "BBBB"


def test_inspect_human(tiny_models, capsys):
    code, out, err = run(["inspect", str(tiny_models["gemma2"])], capsys)
    assert code == 0 and "gemma2" in out + err


def test_eval_ppl_json(tiny_llama, wiki_test, capsys):
    code, out, _ = run(["eval", "ppl", str(tiny_llama), "--data", str(wiki_test), "--seq-len", "32",
                        "--max-windows", "2", "--json"], capsys)
    assert code == 0
    res = json.loads(out)
    assert res["windows"] == 2 and res["seq_len"] == 32 and res["ppl"] > 1


@pytest.mark.parametrize("argv,message", [
    (["inspect", "/nonexistent/model"], "model folder not found"),
    (["eval", "ppl", "/nonexistent/model", "--data", "x.txt"], "model folder not found"),
])
def test_missing_inputs(argv, message, capsys):
    code, out, err = run(argv, capsys)
    assert code == 1 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_missing_data_file(tiny_llama, tmp_path, capsys):
    code, _, err = run(["eval", "ppl", str(tiny_llama), "--data", str(tmp_path / "none.txt")], capsys)
    assert code == 1 and "data file not found" in err


def test_folder_without_config(tmp_path, capsys):
    code, _, err = run(["inspect", str(tmp_path)], capsys)
    assert code == 1 and "no config.json" in err


def test_unsupported_architecture(tmp_path, tiny_llama, capsys):
    bad = tmp_path / "gpt"
    shutil.copytree(tiny_llama, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (bad / "config.json").write_text(json.dumps(cfg))
    # Llama-shaped tensor names are still recognised: that is the detection path, not an error.
    code, out, _ = run(["inspect", str(bad), "--json"], capsys)
    assert code == 0 and json.loads(out)["family"].startswith("llama-like")


def test_not_gguf(tmp_path, capsys):
    f = tmp_path / "fake.gguf"
    f.write_bytes(b"NOPE" + b"\0" * 100)
    code, _, err = run(["convert", str(f), "-o", str(tmp_path / "out")], capsys)
    assert code == 1 and "not a GGUF file" in err
    assert not (tmp_path / "out").exists()


def test_convert_existing_output_needs_force(tmp_path, capsys):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 100)
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("keep")
    code, _, err = run(["convert", str(f), "-o", str(out)], capsys)
    assert code == 1 and "--force" in err and (out / "x").read_text() == "keep"


def test_output_inside_input(tmp_path, capsys):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 100)
    code, _, err = run(["convert", str(f), "-o", str(tmp_path), "--force"], capsys)
    assert code == 1 and "contains the input" in err and f.exists()


def test_bad_option_value(tiny_llama, capsys):
    code, _, err = run(["eval", "ppl", str(tiny_llama), "--data", "x", "--seq-len", "1"], capsys)
    assert code == 1 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error: Invalid value for '--seq-len'") and "--help" in err


def test_real_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "compress", "inspect", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: model folder not found") and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_truncated_weights_one_line(tmp_path, tiny_llama, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_llama, bad)
    f = bad / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-64])
    code, _, err = run(["eval", "ppl", str(bad), "--data", "x.txt"], capsys)
    assert code == 1 and "truncated safetensors file" in err and len(err.strip().splitlines()) == 1


def test_truly_unsupported_architecture(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "num_hidden_layers": 1}')
    save_file({"transformer.h.0.attn.c_attn.weight": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))
    code, _, err = run(["inspect", str(tmp_path)], capsys)
    assert code == 1 and "unsupported architecture 'gpt2'" in err and "qwen3" in err
