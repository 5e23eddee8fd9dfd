"""`compress fuse data` end to end on tiny real models: sets, report, resume, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from compress.cli import main
from tests.fixtures import make_tiny_model


@pytest.fixture(scope="module")
def fuse_models(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from tests.fixtures import tiny_tokenizer

    root = tmp_path_factory.mktemp("fuse")
    a = make_tiny_model(root / "src-a", "llama", layers=2, seed=3)
    base = make_tiny_model(root / "src-base", "gemma3", layers=2, seed=4, tokenizer="sp")
    cfg = json.loads((base / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(cfg))
    (base / "chat_template.jinja").unlink(missing_ok=True)
    target = make_tiny_model(root / "target", "llama", layers=2, seed=5)
    rm_cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=512, num_labels=1, pad_token_id=0)
    import torch

    torch.manual_seed(0)
    LlamaForSequenceClassification(rm_cfg).save_pretrained(str(root / "rm"))
    tiny_tokenizer().save_pretrained(str(root / "rm"))
    return {"a": a, "base": base, "target": target, "rm": root / "rm"}


def _prompts(path: Path, n: int = 4, **extra) -> Path:
    rows = [{"id": f"p{i}", "prompt": f"Question {i}: what is the river number {i}?", **extra} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _args(m, prompts, out, *more):
    return ["fuse", "data", str(prompts), "-o", str(out), "--source", str(m["a"]), "--source", str(m["base"]),
            "--plain", "src-base", "--plain-format", "Q: {prompt}\nA:", "--target", str(m["target"]),
            "--reward-model", str(m["rm"]), "--n", "2", "--max-new-tokens", "5", "--shard-size", "2", "--batch-size", "4",
            *more]


def _lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines()]


def test_build_sets_and_report(fuse_models, tmp_path):
    m, out = fuse_models, tmp_path / "data"
    assert main(_args(m, _prompts(tmp_path / "p.jsonl"), out)) == 0
    assert not Path(str(out) + ".shards").exists()
    report = json.loads((out / "report.json").read_text())
    samples = _lines(out / "samples.jsonl")
    assert [s["id"] for s in samples] == [f"p{i}" for i in range(4)]
    assert all(len(s["samples"][k]) == 2 for s in samples for k in ("src-a", "src-base", "target"))
    assert report["models"]["src-base"]["mode"] == "plain" and report["models"]["src-a"]["mode"] == "chat"
    sft, dpo, wrpo = (_lines(out / f"{k}.jsonl") for k in ("sft", "dpo", "wrpo"))
    for name, rows in (("sft", sft), ("dpo", dpo), ("wrpo", wrpo)):
        assert report[name]["kept"] == len(rows)
        assert report[name]["kept"] + sum(report[name]["dropped"].values()) == 4
    by_id = {s["id"]: s for s in samples}
    for p in dpo:  # same source, chosen scores highest and rejected lowest within that source
        assert p["scores"]["chosen"]["model"] == p["scores"]["rejected"]["model"] == p["source"]
        rewards = [x["score"]["reward"] for x in by_id[p["id"]]["samples"][p["source"]]]
        assert p["scores"]["chosen"]["reward"] == max(rewards) and p["scores"]["rejected"]["reward"] == min(rewards)
    for s in sft:  # the best response over the sources only
        best = max(x["score"]["reward"] for k in ("src-a", "src-base") for x in by_id[s["id"]]["samples"][k])
        assert s["scores"]["chosen"]["reward"] == best and s["source"] in ("src-a", "src-base")
    for w in wrpo:
        tgt = [x["score"]["reward"] for x in by_id[w["id"]]["samples"]["target"]]
        assert w["scores"]["chosen"]["reward"] == max(tgt) and w["scores"]["rejected"]["reward"] == min(tgt)
        assert w["scores"]["source_chosen"]["model"] != "target"
    assert report["throughput"]["responses"] == 24 and report["throughput"]["responses_per_s"] > 0
    assert "logit" in report["units"]["reward"]
    from compress.data.preference import read_preference
    from tests.fixtures import tiny_tokenizer

    if sft:  # the format `compress distill train` reads: sft has chosen only, dpo chosen and rejected
        d = read_preference(out / "sft.jsonl", tiny_tokenizer())
        assert d.has("chosen") and not d.has("rejected")
    if dpo:
        assert read_preference(out / "dpo.jsonl", tiny_tokenizer()).has("rejected")
    prov = json.loads((out / "compress.json").read_text())
    assert prov["recipe"]["method"] == "fuse-data" and prov["report"]["prompts"] == 4


def test_crash_loses_only_the_shard_in_progress_and_resume_reproduces(fuse_models, tmp_path, monkeypatch):
    import compress.fuse.build as build

    m, prompts = fuse_models, _prompts(tmp_path / "p.jsonl")
    assert main(_args(m, prompts, tmp_path / "whole")) == 0
    real, calls = build.build_shard, []

    def crash_on_second(shard, *a, **k):
        calls.append(shard)
        if shard == 1:
            raise KeyboardInterrupt
        return real(shard, *a, **k)

    monkeypatch.setattr("compress.fuse.data.build_shard", crash_on_second)
    out = tmp_path / "resumed"
    assert main(_args(m, prompts, out)) == 130
    assert not out.exists()
    assert sorted(p.name for p in Path(str(out) + ".shards").glob("shard-*")) == ["shard-00000.jsonl"]
    ran = []

    def counting(shard, *a, **k):
        ran.append(shard)
        return real(shard, *a, **k)

    monkeypatch.setattr("compress.fuse.data.build_shard", counting)
    assert main(_args(m, prompts, out)) == 0
    assert ran == [1]  # shard 0 was read back, not sampled again
    assert (out / "samples.jsonl").read_text() == (tmp_path / "whole" / "samples.jsonl").read_text()
    for k in ("sft", "dpo", "wrpo"):
        assert (out / f"{k}.jsonl").read_text() == (tmp_path / "whole" / f"{k}.jsonl").read_text()


def test_resume_with_other_options_is_refused(fuse_models, tmp_path, monkeypatch, capsys):
    m, prompts, out = fuse_models, _prompts(tmp_path / "p.jsonl"), tmp_path / "d"

    import compress.fuse.build as build

    real = build.build_shard
    first = []

    def one_then_crash(shard, *a, **k):
        if first:
            raise KeyboardInterrupt
        first.append(shard)
        return real(shard, *a, **k)

    monkeypatch.setattr("compress.fuse.data.build_shard", one_then_crash)
    assert main(_args(m, prompts, out)) == 130
    capsys.readouterr()
    shards = Path(str(out) + ".shards")
    before = sorted(p.name for p in shards.iterdir())
    assert main(_args(m, prompts, out, "--temperature", "0.7")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other options" in err[0] and "temperature: 0.8 -> 0.7" in err[0]
    assert sorted(p.name for p in shards.iterdir()) == before and not out.exists()


def _one_error(capsys, argv, match):
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and match in err[0], err


def test_bad_input_is_one_line_and_writes_nothing(fuse_models, tmp_path, capsys):
    m = fuse_models
    prompts = _prompts(tmp_path / "p.jsonl")
    out = tmp_path / "never"
    base = ["fuse", "data", str(prompts), "-o", str(out), "--source", str(m["a"]), "--reward-model", str(m["rm"])]
    _one_error(capsys, ["fuse", "data", str(prompts), "-o", str(out), "--source", str(m["base"]), "--reward-model",
                        str(m["rm"])], "has no chat template")
    free = _prompts(tmp_path / "free.jsonl", reference="a helpful, harmless answer")
    _one_error(capsys, ["fuse", "data", str(free)] + base[3:-2] + ["--verifier", "gsm8k"], "cannot score free text")
    _one_error(capsys, base[:-2] + ["--verifier", "choice"], "has no reference")
    _one_error(capsys, base[:-1] + [str(m["target"])], "not a sequence-classification reward model")
    _one_error(capsys, base + ["--max-prompt-length", "5"], "longer than --max-prompt-length 5")
    _one_error(capsys, base[:-2], "nothing scores the responses")
    _one_error(capsys, base + ["--plain", "nosuch"], "--plain nosuch")
    _one_error(capsys, base + ["--temperature", "0"], "identical")
    (tmp_path / "bad.jsonl").write_text('{"text": "no prompt"}\n')
    _one_error(capsys, ["fuse", "data", str(tmp_path / "bad.jsonl")] + base[3:], "expected a JSON object with 'prompt'")
    assert not out.exists() and not Path(str(out) + ".shards").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "free.jsonl", "p.jsonl"]


def test_verifier_build_drops_all_fail_prompts(fuse_models, tmp_path):
    m = fuse_models
    prompts = _prompts(tmp_path / "p.jsonl", n=3, reference="#### 424242")  # tiny random models never say it
    out = tmp_path / "v"
    assert main(["fuse", "data", str(prompts), "-o", str(out), "--source", str(m["a"]), "--target", str(m["target"]),
                 "--verifier", "gsm8k", "--n", "2", "--max-new-tokens", "4", "--json"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["sft"] == {"kept": 0, "dropped": {"all_fail": 3}, "by_source": {}}
    assert report["dpo"]["dropped"] == {"all_fail": 3} and report["wrpo"]["dropped"] == {"no_source_pass": 3}
    assert (out / "sft.jsonl").read_text() == ""
    shutil.rmtree(out)
