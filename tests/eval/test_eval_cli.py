"""`compress eval` through its CLI on tiny real models: bad input, and the numbers against lm-eval
run directly (its HFLM loading the folder, its built-in task YAMLs, an independent data copy)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from compress.cli import main
from tests.eval.reference import hub_format, run_builtin
from tests.fixtures import make_tiny_model

MC_TASKS = ["piqa", "winogrande", "arc_easy", "arc_challenge", "boolq", "openbookqa", "hellaswag"]


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory, tiny_llama):
    other = make_tiny_model(tmp_path_factory.mktemp("tiny2") / "llama-b", "llama", layers=3, seed=7)
    return tiny_llama, other


def test_unknown_task_lists_available(tiny_llama, capsys):
    assert main(["eval", str(tiny_llama), "--tasks", "piqa,mmlu"]) == 1
    line = _err(capsys)
    assert line.startswith("error: unknown task mmlu: available tasks are ")
    assert all(t in line for t in ("piqa", "winogrande", "arc_easy", "boolq", "openbookqa", "hellaswag", "gsm8k", "ppl"))


def test_missing_task_data_says_where(tiny_llama, tmp_path, capsys):
    assert main(["eval", str(tiny_llama), "--tasks", "hellaswag", "--data-dir", str(tmp_path)]) == 1
    line = _err(capsys)
    assert line.startswith("error: no data for task hellaswag: looked for hellaswag/hellaswag_val.jsonl")
    assert str(tmp_path) in line and "--task-data hellaswag=FILE" in line
    assert main(["eval", str(tiny_llama), "--tasks", "ppl", "--data-dir", str(tmp_path)]) == 1
    assert "no data for task ppl: looked for wikitext-2-raw/wiki.test.raw" in _err(capsys)
    assert main(["eval", str(tiny_llama), "--tasks", "piqa", "--task-data", "piqa=" + str(tmp_path / "x.jsonl")]) == 1
    assert "does not exist" in _err(capsys)


@pytest.mark.parametrize("limit", ["0", "-2"])
def test_limit_must_be_positive(tiny_llama, limit, capsys):
    assert main(["eval", str(tiny_llama), "--tasks", "piqa", "--limit", limit]) == 1
    assert _err(capsys) == f"error: --limit must be a positive number of documents, got {limit}"


def test_model_that_cannot_be_loaded(tiny_llama, tmp_path, local_data, capsys):
    assert main(["eval", str(tmp_path / "missing"), "--tasks", "piqa", "--data-dir", str(local_data)]) == 1
    assert _err(capsys) == f"error: model folder not found: {tmp_path / 'missing'}"
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama, broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["intermediate_size"] += 8  # weights no longer fit the config
    (broken / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    assert main(["eval", str(tiny_llama), str(broken), "--tasks", "piqa", "--limit", "1", "--data-dir", str(local_data),
                 "-o", str(out)]) == 1
    line = _err(capsys)
    assert line.startswith("error: ") and "broken" in line
    assert not out.exists()  # the first model's results are not half-written


def test_ppl_subcommand_still_works(tiny_llama, wiki_test, capsys):
    assert main(["eval", "ppl", str(tiny_llama), "--data", str(wiki_test), "--seq-len", "64", "--max-windows", "2",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["windows"] == 2 and res["ppl"] > 1


def _ours_items(model_rec, task):
    return {it["doc_id"]: it for it in model_rec["results"][task]["items"]}


def test_two_models_all_tasks_equal_lm_eval(tiny_pair, local_data, wiki_test, tmp_path, capsys):
    """Every task's metric equals lm-eval's own number, and every item's log-likelihoods (or
    generated text) too; the table, eval.json, Markdown and plot are written."""
    limit = 3
    out = tmp_path / "report"
    tasks = [*MC_TASKS, "gsm8k", "ppl"]
    rc = main(["eval", *map(str, tiny_pair), "--tasks", ",".join(tasks), "--limit", str(limit), "--max-gen-toks", "12",
               "--data-dir", str(local_data), "--data", str(wiki_test), "--seq-len", "64", "--max-windows", "2",
               "-o", str(out), "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    rec = json.loads((out / "eval.json").read_text())
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "results.md").read_text()
    assert tiny_pair[0].name in md and tiny_pair[1].name in md and "acc_norm" in md
    assert "items" not in printed["models"][0]["results"]["piqa"] and "items" in rec["models"][0]["results"]["piqa"]
    assert rec["versions"]["lm_eval"] == __import__("importlib.metadata").metadata.version("lm_eval")
    assert rec["settings"]["limit"] == limit and rec["settings"]["metric_policy"] == "acc_norm_else_acc"
    assert rec["tasks"]["winogrande"]["metric"] == "acc" and rec["tasks"]["piqa"]["metric"] == "acc_norm"
    assert rec["tasks"]["piqa"]["config"]["doc_to_text"] == "Question: {{goal}}\nAnswer:"
    assert rec["tasks"]["gsm8k"]["num_fewshot"] == 5 and rec["tasks"]["hellaswag"]["n"] == 3
    assert all(len(m["hash"]["sha256"]) == 64 for m in rec["models"])
    assert rec["models"][0]["hash"]["sha256"] != rec["models"][1]["hash"]["sha256"]

    ref_files = {t: hub_format(t, local_data, tmp_path / "ref") for t in [*MC_TASKS, "gsm8k"]}
    for m, path in zip(rec["models"][:1], tiny_pair[:1], strict=True):  # the second model: table only (test time)
        ref = run_builtin(path, ref_files, limit=limit, gen_kwargs={"max_gen_toks": 12})
        for t in MC_TASKS:
            key = f"{rec['tasks'][t]['metric']},none"
            assert m["results"][t]["value"] == ref["results"][t][key], (m["name"], t)
            ours = _ours_items(m, t)
            for s in ref["samples"][t]:
                assert ours[s["doc_id"]]["loglikelihoods"] == [round(float(r[0]), 6) for r in s["filtered_resps"]]
        assert m["results"]["gsm8k"]["value"] == ref["results"]["gsm8k"]["exact_match,strict-match"]
        ours = _ours_items(m, "gsm8k")
        strict = [s for s in ref["samples"]["gsm8k"] if s["filter"] == "strict-match"]
        for s in strict:
            assert ours[s["doc_id"]]["response"] == s["resps"][0][0]
        parsed = sum(s["filtered_resps"][0] != "[invalid]" for s in strict) / len(strict)
        assert m["results"]["gsm8k"]["coverage"] == parsed
        from compress import perplexity

        assert m["results"]["ppl"]["ppl"] == perplexity(path, wiki_test, seq_len=64, max_windows=2)["ppl"]

    # the table: average of the accuracy tasks, change against the first model
    accs = [100 * rec["models"][1]["results"][t]["value"] for t in [*MC_TASKS, "gsm8k"]]
    row0, row1 = rec["table"]["rows"]
    assert row1["average"] == pytest.approx(sum(accs) / len(accs))
    assert row1["delta"]["average"] == pytest.approx(row1["average"] - row0["average"])
    assert row1["delta"]["parameters"] < 0  # 3 layers against 4

    # existing output is not overwritten without --force
    assert main(["eval", str(tiny_pair[0]), "--tasks", "piqa", "--limit", "1", "--data-dir", str(local_data),
                 "-o", str(out)]) == 1
    assert "pass --force" in _err(capsys)


@pytest.mark.parametrize("mode", ["physical", "zeroed"])
def test_pruned_checkpoint_equals_masked_model(tiny_llama, local_data, tmp_path, mode):
    """A model written by `compress prune` (each export mode; custom layers for the
    physical one) scores the same as the masked model in memory."""
    from compress import load
    from compress.arch import family_for
    from compress.checkpoint.reader import Checkpoint
    from compress.eval.harness import run_lm_eval
    from compress.eval.run import evaluate
    from compress.eval.tasks import resolve_task_data
    from compress.prune.export import export_pruned
    from compress.prune.mask import apply_removals

    removed = [(1, "attn"), (2, "mlp")]
    pruned = export_pruned(tiny_llama, tmp_path / "pruned", removed, mode=mode)
    tasks = ("piqa", "arc_easy")
    rec = evaluate([tiny_llama, pruned], ",".join(tasks), limit=3, data_dir=local_data)
    dense_rec, pruned_rec = rec["models"]
    if mode == "physical":
        assert pruned_rec["pruned"] and pruned_rec["delta"]["parameters"] < 0
    model, tok = load(tiny_llama)
    ck = Checkpoint(tiny_llama)
    apply_removals(model, family_for(ck.config, ck.names()), removed)
    masked = run_lm_eval(model, tok, [resolve_task_data(t, [local_data]) for t in tasks], limit=3)
    for t in tasks:
        assert pruned_rec["results"][t]["value"] == masked[t].value
        for a, b in zip(pruned_rec["results"][t]["items"], masked[t].items, strict=True):
            assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=1e-4)
    assert pruned_rec["results"]["piqa"]["items"][0]["loglikelihoods"] != dense_rec["results"]["piqa"]["items"][0]["loglikelihoods"]


def test_masked_model_in_memory(tiny_llama, local_data):
    """A model with removed blocks (compress.prune.mask, the modules pruned checkpoints load with)
    runs through lm-eval's HFLM; its log-likelihoods equal a hand computation on the same model."""
    from compress import load
    from compress.arch import family_for
    from compress.checkpoint.reader import Checkpoint
    from compress.eval.harness import run_lm_eval
    from compress.eval.tasks import resolve_task_data
    from compress.eval.tasks.adapters import piqa_rows
    from compress.prune.mask import apply_removals

    data = [resolve_task_data("piqa", [local_data])]
    model, tok = load(tiny_llama)
    dense = run_lm_eval(model, tok, data, limit=2)["piqa"]
    ck = Checkpoint(tiny_llama)
    apply_removals(model, family_for(ck.config, ck.names()), [(1, "attn"), (2, "mlp")])
    masked = run_lm_eval(model, tok, data, limit=2)["piqa"]
    assert masked.items[0]["loglikelihoods"] != dense.items[0]["loglikelihoods"]

    doc = piqa_rows(local_data / "piqa/valid.jsonl", local_data / "piqa/valid-labels.lst")[0]
    ctx = f"Question: {doc['goal']}\nAnswer:"
    expect = []
    for sol in (doc["sol1"], doc["sol2"]):
        whole = tok(ctx + " " + sol, add_special_tokens=False)["input_ids"]
        n_ctx = len(tok(ctx, add_special_tokens=False)["input_ids"])
        ids = torch.tensor([whole])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits.float(), dim=-1)[0]
        expect.append(sum(float(logp[i - 1, whole[i]]) for i in range(n_ctx, len(whole))))
    assert masked.items[0]["loglikelihoods"] == pytest.approx(expect, abs=1e-4)
