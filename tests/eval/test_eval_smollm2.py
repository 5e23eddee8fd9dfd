"""The real SmolLM2-135M-Instruct: `compress eval` (loaded model handed to HFLM, our task configs on
local data) gives exactly the accuracies lm-eval reports when run directly (HFLM loading the
folder, built-in task YAMLs, an independent copy of the data in the hub schema)."""

from __future__ import annotations

import json

import pytest

from compress.cli import main
from tests.eval.reference import hub_format, run_builtin

pytestmark = pytest.mark.slow

MC = ["piqa", "winogrande", "arc_easy", "arc_challenge", "boolq", "openbookqa", "hellaswag"]


def test_smollm2_multiple_choice_equals_lm_eval(smollm2, local_data, tmp_path):
    limit = 3
    assert main(["eval", str(smollm2), "--tasks", ",".join(MC), "--limit", str(limit), "--dtype", "fp32",
                 "--data-dir", str(local_data), "-o", str(tmp_path / "out")]) == 0
    rec = json.loads((tmp_path / "out" / "eval.json").read_text())
    ours = rec["models"][0]["results"]
    ref = run_builtin(smollm2, {t: hub_format(t, local_data, tmp_path) for t in MC}, limit=limit, dtype="float32")
    for t in MC:
        metric = rec["tasks"][t]["metric"]
        assert metric == ("acc" if t in ("winogrande", "boolq") else "acc_norm")
        assert ours[t]["value"] == ref["results"][t][f"{metric},none"], t
        assert ours[t]["metrics"]["acc,none"] == ref["results"][t]["acc,none"], t
        assert ours[t]["n"] == (3 if t == "hellaswag" else limit)
        items = {it["doc_id"]: it["loglikelihoods"] for it in ours[t]["items"]}
        for s in ref["samples"][t]:
            assert items[s["doc_id"]] == [round(float(r[0]), 6) for r in s["filtered_resps"]], (t, s["doc_id"])
    print({t: round(100 * ours[t]["value"], 1) for t in MC})


def test_smollm2_gsm8k_generation_equals_lm_eval(smollm2, local_data, tmp_path, capsys):
    args = dict(limit=2, num_fewshot=1, gen_kwargs={"max_gen_toks": 40})
    assert main(["eval", str(smollm2), "--tasks", "gsm8k", "--limit", "2", "--num-fewshot", "1", "--max-gen-toks", "40",
                 "--dtype", "fp32", "--data-dir", str(local_data), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    ours = rec["models"][0]["results"]["gsm8k"]
    ref = run_builtin(smollm2, {"gsm8k": hub_format("gsm8k", local_data, tmp_path)}, dtype="float32", **args)
    assert ours["value"] == ref["results"]["gsm8k"]["exact_match,strict-match"]
    assert ours["metrics"]["exact_match,flexible-extract"] == ref["results"]["gsm8k"]["exact_match,flexible-extract"]
    assert rec["tasks"]["gsm8k"]["num_fewshot"] == 1


def test_smollm2_wikitext_ppl_equals_hf_rows_and_loss(smollm2, wiki_test, capsys):
    """`eval ppl` on wiki.test.raw = exp(mean of transformers' own loss) over windows cut from the
    tokens of the HF `wikitext-2-raw-v1` test rows joined with "\\n\\n" (rows built here as the HF
    loader builds them: each line with its newline, blank lines "")."""
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with open(wiki_test, encoding="utf-8") as fh:
        rows = [row if row.strip() else "" for row in fh]
    tok = AutoTokenizer.from_pretrained(smollm2)
    ids = tok("\n\n".join(rows), return_tensors="pt")["input_ids"][0]
    windows = ids[: 2 * 512].view(2, 512)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    with torch.no_grad():
        ref = math.exp(sum(float(model(input_ids=w[None], labels=w[None]).loss) for w in windows) / 2)
    assert main(["eval", "ppl", str(smollm2), "--data", str(wiki_test), "--seq-len", "512", "--max-windows", "2",
                 "--dtype", "float32", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["ppl"] == pytest.approx(ref, rel=1e-4)
    assert res["windows_available"] == ids.numel() // 512
    assert res["text_format"] == "wikitext-2 rows joined with \\n\\n"
