"""`compress eval --ensemble M1,M2 --fusion cool-fusion[+r]`: the fused decoder in the comparison table."""

from __future__ import annotations

import json

from compress.cli import main


def test_ensemble_row_beside_single_models(tiny_pair_paths, shared_data, tmp_path, capsys):
    bpe, sp = str(tiny_pair_paths["bpe"]), str(tiny_pair_paths["sp"])
    code = main(["eval", bpe, "--ensemble", f"{bpe},{sp}", "--fusion", "cool-fusion+r", "--tasks", "gsm8k",
                 "--limit", "2", "--num-fewshot", "1", "--max-gen-toks", "8", "--data-dir", str(shared_data),
                 "-o", str(tmp_path / "ev"), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    res = json.loads(out)
    assert [r["model"] for r in res["table"]["rows"]] == ["llama-bpe", "cool-fusion+r(llama-bpe+gemma3-sp)"]
    ens = res["models"][1]
    assert ens["results"]["gsm8k"]["n"] == 2 and ens["fusion"] == "cool-fusion+r"
    stats = ens["fusion_stats"]
    assert set(stats["wins"]) == {"llama-bpe", "gemma3-sp"} and sum(stats["rerank_chosen"].values()) == 2
    assert sum(stats["wins"].values()) + stats["agreed"] == stats["segments"]
    assert stats["backed"] == stats["wins"]  # two models: a contested segment's candidates have one proposer each
    assert res["settings"]["ensembles"] == [[bpe, sp]]
    saved = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert len(saved["models"][1]["results"]["gsm8k"]["items"]) == 2


def test_ensemble_on_loglikelihood_tasks_is_one_error(tiny_pair_paths, capsys):
    bpe, sp = str(tiny_pair_paths["bpe"]), str(tiny_pair_paths["sp"])
    for tasks in ("piqa", "gsm8k,ppl"):
        code = main(["eval", "--ensemble", f"{bpe},{sp}", "--tasks", tasks])
        _, err = capsys.readouterr()
        assert code == 1 and "generation tasks only" in err and len(err.strip().splitlines()) == 1
