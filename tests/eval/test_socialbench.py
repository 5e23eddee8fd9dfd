"""SocialBench without a model: data checks, prompts against the official rule, parsing and scoring
against hand-computed values, column splits, averages, task names and the paired bootstrap."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from compress.errors import CompressError
from compress.eval import paired, socialbench
from compress.eval.socialbench import COLUMN, TASKS
from compress.eval.socialbench.data import check_file, check_item, column_items, column_report
from compress.eval.socialbench.prompts import build_prompt
from compress.eval.socialbench.run import column_table, describe, summarize
from compress.eval.socialbench.scoring import (
    chance,
    fallback_letters,
    parse_answer,
    score_choice,
    score_memory,
    select_by_loglik,
)
from compress.eval.socialbench.tasks import dataset, process_generation, process_loglik, score_generation
from compress.eval.tasks import TaskData, parse_tasks, resolve_task_data, task_config, task_data_paths
from tests.eval.socialbench_reference import EMOTIONAL, FILES, MEMORY, SOCIAL, reference_prompt, write_data

ALL_ITEMS = [it for items in FILES.values() for it in items]


@pytest.mark.parametrize("i", range(len(ALL_ITEMS)))
def test_template_prompt_equals_official_rule(i):
    raw = ALL_ITEMS[i]
    assert build_prompt(check_item(i, raw), "template") == reference_prompt(raw)


def test_prompt_by_hand():
    """Two prompts written out in full: DialogueEmotionDetect (quotes the last utterance) and SAP
    (every profile, blank lines dropped, first 10 lines, joined by two blank lines)."""
    emo = build_prompt(check_item(0, EMOTIONAL[0]))
    assert emo == ('\n==Conversations==\nAnn: I lost my keys again.\nBob: Oh no, not again!\n\n\n'
                   'Select the option () that best matches the mood in utterance "Oh no, not again!". Single Choice\n'
                   'A. fear\nB. sadness\nC. surprise\nD. anger\nE. disgust\nF. joy\nG. neutral\nH. non-neutral\n\n\n'
                   'Your selection:\n')
    sp = build_prompt(check_item(0, SOCIAL[0]))
    dora = "line 1\nline 2\nline 3\nline 4\nline 5\nline 6\nline 7\nline 8\nline 9\nline 10"
    assert "==Profiles==\nAnn is kind.\n\n\n" + dora + "\n\n\nCarl\nmoves\n\n==Conversations==\n" in sp
    assert build_prompt(check_item(0, EMOTIONAL[2])) == (
        "User: Which sentence is a joke? Single choice.\n\nA. Why did the chicken cross the road? To get to the other "
        "side.\nB. It rains.\nC. The bus is late.\nD. Prices went up.\n")


def test_instruction_prompt_source():
    emo = build_prompt(check_item(0, EMOTIONAL[0]), "instruction")
    assert emo == ("Ann: I lost my keys again.\nBob: Oh no, not again!\n\nSelect the option that best matches the mood "
                   "of the speaker in the last utterance:\nA. fear\nB. sadness\nC. surprise\nD. anger\nE. disgust\n"
                   "F. joy\nG. neutral\nH. non-neutral\n")
    # an empty instruction: HumorSarcasm/Situation get exactly their template prompt
    assert build_prompt(check_item(0, EMOTIONAL[2]), "instruction") == build_prompt(check_item(0, EMOTIONAL[2]))
    mem = build_prompt(check_item(0, MEMORY[0]), "instruction")
    assert mem.startswith("Gentle; loves football.\n\nUser: utterance 0\n") and mem.endswith("\nReply as Beth.\n")


@pytest.mark.parametrize("text,letters,method", [
    ("C", ("C",), "pattern"),
    ("C. surprise", ("C",), "pattern"),
    ("(B) sadness", ("B",), "pattern"),
    ("A. deadlines\nC. sleep loss", ("A", "C"), "pattern"),  # option lines: each line's letter
    ("C. surprise\n\nNot B, since she laughs.", ("C",), "pattern"),
    ("A good option is C", ("C",), "pattern"),  # the article A is not the answer (known bug 4)
    ("The answer is B because she cries.", ("B",), "pattern"),
    ("Answer: A and C", ("A", "C"), "pattern"),
    ("[[D]]", ("D",), "pattern"),
    ("答案是A和C", ("A", "C"), "pattern"),
    ("我选择：B", ("B",), "pattern"),
    ("She feels F here, maybe E", ("F", "E"), "fallback"),
    ("Bob is surprised, so C fits.", ("C",), "fallback"),
    ("I think she is happy", (), "none"),
    ("", (), "none"),
    (None, (), "none"),
])
def test_parse_answer(text, letters, method):
    p = parse_answer(text)
    assert (p.letters, p.method) == (letters, method)


OPTS = (["A", "B", "C", "D"], ["Happy", "Sad", "Angry about the deadline", "Calm"])


@pytest.mark.parametrize("text,letters,method", [
    ("E is not one of them, so B", ("B",), "fallback"),  # outside the options: no answer (official: E, 0)
    ("Answer: E. No, answer is C", ("C",), "pattern"),  # a pattern left with no option letter gives way
    ("A. Happy\nB. Sad\nC. Angry about the deadline\nD. Calm", (), "none"),  # the option list echoed
    ("(A) happy\n(B) sad\n(C) Angry about the deadline, surely\n(D) calm\nShe is sad: B", ("B",), "fallback"),
    ("A. Happy\nC. Angry about the deadline", ("A", "C"), "pattern"),  # two options named: an answer
    ("C. Angry", ("C",), "pattern"),  # the start of an option is an answer, not an echo
    ("A. I'm so excited!\nB. I'm so nervous!\nC. I'm so excited!\nD. I'm", (), "none"),  # a made-up list
    ("A. Happy\nB. Sad\nC. Calm\nAnswer: B", ("B",), "pattern"),  # a list, then the answer
])
def test_parse_answer_with_the_items_options(text, letters, method):
    p = parse_answer(text, *OPTS, single=True)
    assert (p.letters, p.method) == (letters, method)
    if method == "none":  # on a multiple-choice item the same lines are read as the answer
        assert parse_answer(text, *OPTS).letters == ("A", "B", "C", "D")
    # the official rule (no options given) reads the echo as every letter, a free first guess
    if "D. Calm" in text:
        assert parse_answer(text).letters == ("A", "B", "C", "D")


def test_fallback_is_the_official_letter_rule():
    # standalone capitals A-H in order, de-duplicated; neighbours A-D or CJK count as separators
    assert fallback_letters("B, then A, then B") == ("B", "A")
    assert fallback_letters("ABC") == ("A", "B", "C")
    assert fallback_letters("BE") == ("E",)  # B is followed by E (not A-D): not standalone; E follows B
    assert fallback_letters("选A") == ("A",) and fallback_letters("A1 Bx C") == ("C",)
    assert fallback_letters("Ivy and Hal") == ()
    assert fallback_letters("A和B") == ("A", "B")  # the official regex would drop B (it consumed 和)


def test_scores_by_hand():
    assert score_choice(["C", "A"], ["C"]) == 1.0 and score_choice(["A", "C"], ["C"]) == 0.0  # first letter only
    assert score_choice(["A"], ["A", "C"]) == 0.5 and score_choice(["A", "C"], ["A", "C"]) == 1.0
    assert score_choice(["A", "B"], ["A", "C"]) == 0.0  # any wrong letter: 0
    assert score_choice([], ["A"]) is None
    assert score_memory("I support the New England PATRIOTS", ["Patriots", "football"]) == 0.5
    assert score_memory("   ", ["x"]) is None and score_memory(None, ["x"]) is None


def test_memory_items_reach_the_keyword_branch():
    """Known bug 1: the category string (not meta) decides; every MEM spelling is scored by keywords."""
    for raw in MEMORY:
        doc = {"kind": check_item(0, raw).kind, "label": raw["label"]}
        reply = f"Well, {raw['label'][0]} of course."  # no option letter in it: as multiple choice it would be None
        s = score_generation(doc, reply)
        assert s["method"] == "keywords" and s["score"] == pytest.approx(1 / len(raw["label"]))
        assert process_generation(doc, [reply]) == {"strict": s["score"], "coverage": 1.0, "fallback": 0.0}


def test_none_counts_in_strict_and_coverage():
    doc = {"kind": "ep_plain", "label": ["A"], "letters": list("ABCD")}
    assert process_generation(doc, ["no idea"]) == {"strict": 0.0, "coverage": 0.0, "fallback": 0.0}
    items = [{"score": 1.0, "method": "pattern"}, {"score": None, "method": "none"}, {"score": 0.5, "method": "fallback"},
             {"score": 0.0, "method": "pattern"}]
    s = summarize(items)
    assert s == {"n": 4, "strict": 1.5 / 4, "score": 1.5 / 3, "coverage": 3 / 4, "fallback": 1 / 3}


def test_loglik_rule_is_blind_to_the_number_of_answers():
    lls = [math.log(0.5), math.log(0.3), math.log(0.15), math.log(0.05)]
    assert select_by_loglik(lls, list("ABCD")) == ("A", "B")  # 0.5 and 0.3 exceed 1/4
    # the same log-likelihoods give the same choice whatever the label: scored 1 / 0.5 / 0 by hand
    for label, want in ((["A", "B"], 1.0), (["A", "C", "B", "D"], 0.5), (["A"], 1.0), (["C"], 0.0), (["A", "C"], 0.0)):
        doc = {"letters": list("ABCD"), "label": label}
        assert process_loglik(doc, [(x, False) for x in lls])["strict"] == want
    assert select_by_loglik([-1.0, -1.0, -1.0], list("ABC")) == ("A",)  # nothing above uniform: the argmax
    assert select_by_loglik([-0.1, -5.0, -6.0], list("ABC")) == ("A",)


def test_chance_rates():
    assert chance(8) == 0.125 and chance(4) == 0.25


def test_memory_split_at_40_utterances(tmp_path):
    check = check_file(write_data(tmp_path, {"conversation_memory.json": MEMORY}) / "conversation_memory.json")
    short = column_items(check, COLUMN["cm_short"], "en")
    long = column_items(check, COLUMN["cm_long"], "en")
    assert [len(it.dialogue) for it in short] == [39] and [len(it.dialogue) for it in long] == [40]
    assert [it.index for it in column_items(check, COLUMN["cm_short"], "zh")] == [2]


def test_bad_items_counted_not_fatal(tmp_path):
    items = [dict(EMOTIONAL[0]), {**EMOTIONAL[1], "dialogue": []}, {**EMOTIONAL[2], "label": ["E"]},
             {**EMOTIONAL[3], "meta": {"lang": "en"}}, EMOTIONAL[0], EMOTIONAL[0], EMOTIONAL[2], EMOTIONAL[3]]
    p = write_data(tmp_path, {"emotional_perception.json": items}) / "emotional_perception.json"
    check = check_file(p)
    assert [(b["index"], b["reason"]) for b in check.bad] == [
        (1, "empty dialogue"), (2, "label E is not among the choices A, B, C, D"), (3, "meta.category is missing")]
    rep = column_report(check, COLUMN["ep_emo"], "en")
    assert rep["items"] == 4 and rep["excluded"] == [{"index": 2, "reason": "label E is not among the choices A, B, C, D"}]
    assert column_report(check, COLUMN["ep_emo"], "zh")["excluded"] == [{"index": 1, "reason": "empty dialogue"}]


def test_shared_ep_file_item_758_excluded(shared_data):
    td = resolve_task_data("socialbench_ep_emo_zh", [shared_data])
    d = describe(td)
    assert d["data_report"]["excluded"] == [{"index": 758, "reason": "label D is not among the choices A, B, C"}]
    assert d["data_report"]["items"] == 231 + 312 - 1 and d["data_report"]["file_items"] == 1209
    situ = describe(resolve_task_data("socialbench_ep_situ_zh", [shared_data]))["data_report"]
    situ_en = describe(resolve_task_data("socialbench_ep_situ_en", [shared_data]))["data_report"]
    assert situ["items"] + situ_en["items"] == 193 and situ["multi_answer"] + situ_en["multi_answer"] == 150
    assert describe(resolve_task_data("socialbench_ep_emo_en", [shared_data]))["chance"] == pytest.approx(
        (373 / 8 + 100 / 4) / 473)


@pytest.mark.parametrize("content,match", [
    ('{"dialogue": []}', "must be a JSON list of items, it holds a dict"),
    ("[]", "holds no items"),
    ("not json", "is not JSON"),
    (json.dumps([{**EMOTIONAL[0], "meta": {"lang": "en"}}] * 3), "3 of 3 items are bad .item 0: meta.category is missing"),
    (json.dumps([{**EMOTIONAL[0], "dialogue": []}] * 2 + [EMOTIONAL[0]]), "2 of 3 items are bad .item 0: empty dialogue"),
])
def test_wrong_file_shape_is_refused(tmp_path, content, match):
    p = tmp_path / "emotional_perception.json"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(CompressError, match=match):
        check_file(p)


def test_fixture_round_trips_through_the_lm_eval_adapter(tmp_path):
    """The EP fixture, written as the official CRLF JSON, comes back as lm-eval documents with the
    official prompts, letters and labels; the task config reads it."""
    folder = write_data(tmp_path)
    td = resolve_task_data("socialbench_ep_emo_en", None, folder)
    td.options.update(mode="loglik", prompt_source="template")
    cfg = task_config(td)
    assert cfg["output_type"] == "multiple_choice" and cfg["task"] == "socialbench_ep_emo_en"
    docs = cfg["custom_dataset"](**cfg["dataset_kwargs"])["test"]
    assert [d["index"] for d in docs] == [0, 2]
    assert [d["prompt"] for d in docs] == [reference_prompt(EMOTIONAL[0]), reference_prompt(EMOTIONAL[2])]
    assert docs[0]["letters"] == list("ABCDEFGH") and docs[0]["gold"] == 2 and docs[1]["label"] == ["A"]
    cm = TaskData("socialbench_cm_long_en", {"test": str(folder / "conversation_memory.json")},
                  {"mode": "loglik"})
    assert task_config(cm)["output_type"] == "generate_until"  # memory stays generative
    with pytest.raises(CompressError, match="holds no SA Style items in en"):
        dataset(files={"test": str(folder / "emotional_perception.json")}, column="sa_style", lang="en")


def test_task_names_groups_and_data_keys(tmp_path):
    assert len(TASKS) == 18 and parse_tasks("socialbench_ep_en") == ["socialbench_ep_situ_en", "socialbench_ep_emo_en"]
    assert parse_tasks("socialbench_sp_zh,socialbench_sp_neg_zh") == [
        "socialbench_sp_pos_zh", "socialbench_sp_neu_zh", "socialbench_sp_neg_zh"]
    assert len(parse_tasks("socialbench")) == 18 and len(parse_tasks("socialbench_en")) == 9
    with pytest.raises(CompressError, match="unknown task socialbench_ep_foo_en: available tasks are .*socialbench_COLUMN"):
        parse_tasks("socialbench_ep_foo_en")
    tasks = parse_tasks("socialbench_ep,piqa")
    got = task_data_paths({"socialbench": "/d", "socialbench_ep_emo_zh": "/e.json", "piqa": "/p"}, tasks)
    assert got == {"socialbench_ep_situ_en": "/d", "socialbench_ep_emo_en": "/d", "socialbench_ep_situ_zh": "/d",
                   "socialbench_ep_emo_zh": "/e.json", "piqa": "/p"}
    with pytest.raises(CompressError, match="given for socialbench_sa, which is not in --tasks"):
        task_data_paths({"socialbench_sa": "/d"}, tasks)
    folder = write_data(tmp_path)
    assert resolve_task_data("socialbench_sp_neu_en", None, folder).files == {"test": str(folder / "social_preference.json")}
    assert socialbench.expand("socialbench_cm") == ("socialbench_cm_short_en", "socialbench_cm_long_en",
                                                    "socialbench_cm_short_zh", "socialbench_cm_long_zh")


def _res(value, items=None):
    return {"value": value, "items": items or [{"score": value, "method": "pattern", "strict": value}]}


def test_nine_column_average_only_when_all_nine_measured():
    full = {t: _res(0.1 * (i % 9 + 1)) for i, t in enumerate(TASKS)}
    tab = column_table(full)
    assert tab["average"]["en"] == pytest.approx(sum(0.1 * k for k in range(1, 10)) / 9)
    assert tab["average"]["all"] == pytest.approx(tab["average"]["en"])
    part = {t: r for t, r in full.items() if t != "socialbench_sp_neg_zh"}
    tab = column_table(part)
    assert tab["average"]["zh"] is None and tab["average"]["en"] is not None and tab["average"]["all"] is not None
    assert tab["columns"]["sp_neg"]["all"] == pytest.approx(0.9)  # pooled over what exists (en only)
    pooled = column_table({"socialbench_ep_situ_en": _res(1.0), "socialbench_ep_situ_zh": {
        "value": 0.0, "items": [{"score": 0.0, "method": "pattern"}] * 2 + [{"score": None, "method": "none"}]}})
    assert pooled["columns"]["ep_situ"]["all"] == 0.25 and pooled["columns"]["ep_situ"]["paper"] == pytest.approx(1 / 3)
    assert pooled["average"]["all"] is None


def test_paired_bootstrap_matches_scipy():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(3)
    a = rng.integers(0, 2, 300).astype(float)
    b = np.clip(a + rng.choice([0, 0, 0, 1, -1], 300), 0, 1)
    r = paired.paired_bootstrap(a, b, iters=20000, seed=1)
    ref = bootstrap(((b - a),), np.mean, n_resamples=20000, method="percentile", confidence_level=0.95,
                    random_state=np.random.default_rng(2)).confidence_interval
    assert r["diff"] == pytest.approx((b - a).mean())
    assert abs(r["lo"] - ref.low) < 0.006 and abs(r["hi"] - ref.high) < 0.006
    recs = [{"name": "a", "results": {"t": {"metric": "acc", "items": [{"doc_id": i, "acc": x} for i, x in enumerate(a)]}}},
            {"name": "b", "results": {"t": {"metric": "acc", "items": [{"doc_id": i, "acc": x} for i, x in enumerate(b)]}}}]
    ci = paired.intervals(recs, ["t"], iters=20000, seed=1)["b"]["t"]
    assert ci["diff"] == pytest.approx(100 * r["diff"]) and ci["lo"] == pytest.approx(100 * r["lo"])
