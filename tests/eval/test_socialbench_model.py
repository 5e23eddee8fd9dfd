"""SocialBench through `compress eval` on a tiny real model: loglik scores against an independent
computation with plain transformers, the generative path end to end, and bad input on the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from compress.cli import main
from compress.eval.socialbench.scoring import score_choice, select_by_loglik
from tests.eval.socialbench_reference import EMOTIONAL, MEMORY, reference_prompt, write_data
from tests.fixtures import make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("sb") / "tiny", "llama", layers=2, seed=5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("sbdata") / "SocialBench")


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def _lm_eval_style_loglik(model, tok, prompt: str, letter: str) -> float:
    """log P(letter | chat-templated prompt), computed here with plain transformers: the context is the
    prompt as one user turn with the generation prompt; its trailing whitespace goes to the continuation
    (lm-eval's convention); tokens of context + continuation beyond the context's are scored."""
    ctx = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    base = ctx.rstrip()
    cont = ctx[len(base):] + letter
    c_ids = tok(base, add_special_tokens=False)["input_ids"]
    w_ids = tok(base + cont, add_special_tokens=False)["input_ids"]
    n = len(w_ids) - len(c_ids)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([w_ids])).logits[0].float(), -1)
    return float(sum(logp[len(w_ids) - n - 1 + i, w_ids[len(w_ids) - n + i]] for i in range(n)))


def test_loglik_mode_against_plain_transformers(tiny, data, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "out"
    assert main(["eval", str(tiny), "--tasks", "socialbench_ep_en", "--socialbench-mode", "loglik",
                 "--task-data", f"socialbench={data}", "-o", str(out), "--log-samples"]) == 0
    res = json.loads((out / "eval.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny)
    emo = res["models"][0]["results"]["socialbench_ep_emo_en"]
    situ = res["models"][0]["results"]["socialbench_ep_situ_en"]
    assert [it["index"] for it in emo["items"]] == [0, 2] and [it["index"] for it in situ["items"]] == [3]
    raws = {0: EMOTIONAL[0], 2: EMOTIONAL[2], 3: EMOTIONAL[3]}
    for it in emo["items"] + situ["items"]:
        raw = raws[it["index"]]
        ref = [_lm_eval_style_loglik(model, tok, reference_prompt(raw), k) for k in raw["choices"]]
        assert it["loglikelihoods"] == pytest.approx(ref, abs=2e-4)
        letters = select_by_loglik(ref, list(raw["choices"]))
        assert tuple(it["letters"]) == letters and it["score"] == score_choice(letters, raw["label"])
        assert it["method"] == "loglik"
    for r in (emo, situ):
        assert r["value"] == pytest.approx(sum(it["strict"] for it in r["items"]) / len(r["items"]))
        assert r["metrics"]["strict,none"] == pytest.approx(r["value"]) and r["coverage"] == 1.0
        assert r["prompt_format"] == "chat template"
    info = res["tasks"]["socialbench_ep_situ_en"]
    assert info["mode"] == "loglik" and "above 1/k" in info["loglik_rule"] and info["chance"] == 0.25
    logged = [json.loads(x) for x in (out / "samples" / "tiny.socialbench_ep_emo_en.jsonl").read_text().splitlines()]
    assert [x["prompt"] for x in logged] == [reference_prompt(EMOTIONAL[0]), reference_prompt(EMOTIONAL[2])]
    assert "EP Emo." in (out / "results.md").read_text()


def test_generative_mode_end_to_end(tiny, data, tmp_path):
    """Generation with the memory column: each reply is re-scored here by the rule (keywords for MEM)."""
    out = tmp_path / "gen"
    assert main(["eval", str(tiny), str(tiny), "--names", "a,b", "--tasks", "socialbench_cm_en,socialbench_ep_emo_zh",
                 "--task-data", f"socialbench={data}", "--max-gen-toks", "6", "-o", str(out)]) == 0
    res = json.loads((out / "eval.json").read_text())
    a, b = res["models"]
    short = a["results"]["socialbench_cm_short_en"]["items"][0]
    kw = MEMORY[0]["label"]
    want = sum(k.lower() in short["response"].lower() for k in kw) / len(kw) if short["response"].strip() else None
    assert short["method"] in ("keywords", "none") and short["score"] == want
    assert res["tasks"]["socialbench_cm_long_en"]["mode"] == "generative" and res["tasks"]["socialbench_cm_long_en"]["chance"] is None
    zh = a["results"]["socialbench_ep_emo_zh"]
    assert zh["value"] == pytest.approx(zh["metrics"]["strict,none"]) and zh["coverage"] == pytest.approx(
        zh["metrics"]["coverage,none"])
    # same model twice: identical answers, a zero difference and a zero-width interval
    assert b["delta_ci"]["socialbench_ep_emo_zh"]["diff"] == 0.0 and b["delta_ci"]["socialbench_ep_emo_zh"]["hi"] == 0.0
    assert a["socialbench"]["average"]["all"] is None  # only 3 of 9 columns measured


def test_bad_input_one_error_line(tiny, data, tmp_path, capsys):
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"dialogue": [], "label": ["A"]}))
    assert main(["eval", str(tiny), "--tasks", "socialbench_ep_emo_en", "--task-data", f"socialbench={wrong}"]) == 1
    assert _err(capsys) == (f"error: SocialBench data {wrong} is not in the SocialBench shape: the file must be a JSON "
                            "list of items, it holds a dict")
    nocat = tmp_path / "nocat.json"
    nocat.write_text(json.dumps([{**EMOTIONAL[0], "meta": {"lang": "en"}}] * 2))
    assert main(["eval", str(tiny), "--tasks", "socialbench_ep_emo_en", "--task-data", f"socialbench={nocat}"]) == 1
    assert "2 of 2 items are bad (item 0: meta.category is missing)" in _err(capsys)
    assert main(["eval", str(tiny), "--tasks", "socialbench_ep_feelings_en"]) == 1
    assert _err(capsys).startswith("error: unknown task socialbench_ep_feelings_en: available tasks are")
    ep = data / "emotional_perception.json"
    assert main(["eval", str(tiny), "--tasks", "socialbench_sa_style_en", "--task-data", f"socialbench_sa={ep}"]) == 1
    line = _err(capsys)
    assert line.startswith("error: no data for task socialbench_sa_style_en: ") and "holds no SA Style items in en" in line
    assert line.endswith("pass the file of that dimension, self_awareness.json")
    assert main(["eval", str(tiny), "--tasks", "socialbench_ep_en", "--task-data", f"socialbench={data}",
                 "--log-samples"]) == 1
    assert _err(capsys) == "error: --log-samples writes the per-item logs into the output folder: give -o OUT"


def test_single_bad_items_are_reported_not_fatal(tiny, tmp_path):
    items = [EMOTIONAL[0], {**EMOTIONAL[0], "dialogue": []}, {**EMOTIONAL[2], "label": ["E"]}, EMOTIONAL[2]]
    folder = write_data(tmp_path / "d", {"emotional_perception.json": items})
    out = tmp_path / "out"
    assert main(["eval", str(tiny), "--tasks", "socialbench_ep_emo_en", "--task-data", f"socialbench={folder}",
                 "--socialbench-mode", "loglik", "-o", str(out)]) == 0
    res = json.loads((out / "eval.json").read_text())
    rep = res["tasks"]["socialbench_ep_emo_en"]["data_report"]
    assert rep["items"] == 2 and rep["file_bad_items"] == 2
    assert rep["excluded"] == [{"index": 1, "reason": "empty dialogue"},
                               {"index": 2, "reason": "label E is not among the choices A, B, C, D"}]
    assert [it["index"] for it in res["models"][0]["results"]["socialbench_ep_emo_en"]["items"]] == [0, 3]
