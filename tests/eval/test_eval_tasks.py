"""Task configs, local-data adapters, metric policy and the comparison table (no model runs)."""

from __future__ import annotations

import json
import math

import pytest

from compress.errors import CompressError
from compress.eval.report import average, bar_plot, build_table, markdown
from compress.eval.tasks import (
    ALL_TASKS,
    LM_EVAL_TASKS,
    SOCIALBENCH_TASKS,
    load_task_yaml,
    parse_tasks,
    primary_metric,
    resolve_task_data,
    task_config,
)
from tests.eval.reference import HELLASWAG_ROWS, builtin_config, hub_format

PROMPT_KEYS = ("output_type", "doc_to_text", "doc_to_choice", "doc_to_target", "metric_list", "generation_kwargs",
               "filter_list", "num_fewshot", "repeats", "process_docs", "target_delimiter", "fewshot_delimiter")


def test_metric_policy_spec():
    """The papers' policy: acc for WinoGrande, acc_norm for PIQA, HellaSwag, ARC-e and ARC-c."""
    pol = {t: primary_metric(load_task_yaml(t)) for t in LM_EVAL_TASKS}
    assert pol["winogrande"] == "acc"
    assert all(pol[t] == "acc_norm" for t in ("piqa", "hellaswag", "arc_easy", "arc_challenge"))
    assert pol["boolq"] == "acc" and pol["openbookqa"] == "acc_norm" and pol["gsm8k"] == "exact_match"


@pytest.mark.parametrize("task", LM_EVAL_TASKS)
def test_prompts_equal_lm_eval_builtin(task, tmp_path):
    """Our YAML carries lm-eval's built-in prompts, metrics and decoding settings unchanged."""
    ours = load_task_yaml(task)
    theirs = builtin_config(task, {"x": "unused"})
    for k in PROMPT_KEYS:
        a, b = ours.get(k), theirs.get(k)
        if callable(a) or callable(b):
            assert (a.__module__, a.__name__) == (b.__module__, b.__name__), k
        else:
            assert a == b, k
    assert ours["metadata"]["version"] == theirs["metadata"]["version"]


def _docs(cfg):
    from lm_eval.api.task import ConfigurableTask

    t = ConfigurableTask(config=cfg)
    docs = list(t.test_docs() if t.has_test_docs() else t.validation_docs())
    return t, docs


@pytest.mark.parametrize("task", LM_EVAL_TASKS)
def test_adapter_gives_builtin_prompts(task, shared_data, tmp_path):
    """Documents of the local file (150 first, every 11th, all numeric ARC keys): our adapter + YAML and lm-eval's built-in task on an
    independently converted copy render the same text, choices and target."""
    if task == "hellaswag":
        (tmp_path / "hellaswag").mkdir()
        (tmp_path / "hellaswag" / "hellaswag_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in HELLASWAG_ROWS))
        data = resolve_task_data(task, [tmp_path])
        ref_files = hub_format(task, tmp_path, tmp_path / "ref")
    else:
        data = resolve_task_data(task, [shared_data])
        ref_files = hub_format(task, shared_data, tmp_path / "ref")
    ours, ours_docs = _docs(task_config(data))
    ref_cfg = builtin_config(task, ref_files)
    theirs, their_docs = _docs(ref_cfg)
    assert len(ours_docs) == len(their_docs) > 0
    # the first 150 documents, every 11th after them, and every ARC row with a numeric answer key
    sel = [i for i, d in enumerate(their_docs) if i < 150 or i % 11 == 0 or str(d.get("answerKey", "A")).isdigit()]
    for i in sel:
        a, b = ours_docs[i], their_docs[i]
        assert a == b if task != "winogrande" else a["answer"] == b["answer"], i
        assert ours.doc_to_text(a) == theirs.doc_to_text(b), i
        assert ours.doc_to_target(a) == theirs.doc_to_target(b), i
        if ours.OUTPUT_TYPE == "multiple_choice":
            assert ours.doc_to_choice(a) == theirs.doc_to_choice(b), i


def test_arc_numeric_answer_keys_and_odd_choice_counts(shared_data):
    from compress.eval.tasks.adapters import arc

    ds = arc(files={"test": str(shared_data / "arc/ARC-Easy-Test.jsonl")})["test"]
    numeric = [r for r in ds if r["answerKey"].isdigit()]
    assert len(numeric) == 97  # the shared data README: some keys are 1-4
    assert all(r["choices"]["label"].index(r["answerKey"]) >= 0 for r in numeric)
    assert {len(r["choices"]["text"]) for r in ds} == {3, 4, 5}


def test_openbookqa_tsv_choices(shared_data):
    from compress.eval.tasks.adapters import openbookqa

    ds = openbookqa(files={"test": str(shared_data / "openbookqa/test.tsv")})["test"]
    assert len(ds) == 500
    first = ds[0]
    assert first["choices"] == {"text": ["make more phone calls", "quit eating lunch out", "buy less with monopoly money",
                                         "have lunch with friends"], "label": ["A", "B", "C", "D"]}
    assert first["answerKey"] == "B"


def test_winogrande_both_formats_give_same_choices():
    from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_choice, doc_to_target, doc_to_text

    from compress.eval.tasks.adapters import _winogrande_row

    orig = {"sentence": "They were worried the wine would ruin the bed and the blanket, but the _ was't ruined.",
            "option1": "blanket", "option2": "bed", "answer": "2"}
    foundry = {"context_options": ["They were worried the wine would ruin the bed and the blanket, but the blanket",
                                   "They were worried the wine would ruin the bed and the blanket, but the bed"],
               "continuation": "was't ruined.", "gold": 1}
    a, b = _winogrande_row(orig), _winogrande_row(foundry)
    assert doc_to_choice(a) == doc_to_choice(b) and doc_to_target(a) == doc_to_target(b) and doc_to_text(a) == doc_to_text(b) == 1
    assert b["option1"] == "blanket" and b["option2"] == "bed"


def test_boolq_google_format(tmp_path):
    from compress.eval.tasks.adapters import boolq

    p = tmp_path / "dev.jsonl"
    p.write_text(json.dumps({"question": "is it", "title": "T", "answer": True, "passage": "P."}) + "\n")
    row = boolq(files={"validation": str(p)})["validation"][0]
    assert row["passage"] == "T -- P." and row["label"] == 1


def test_parse_tasks_and_errors(tmp_path):
    assert parse_tasks("piqa, ARC_easy,piqa") == ["piqa", "arc_easy"]
    with pytest.raises(CompressError, match="available tasks are .*piqa.*ppl"):
        parse_tasks("piqa,mmlu")
    with pytest.raises(CompressError, match=r"no data for task hellaswag: looked for hellaswag/hellaswag_val.jsonl.* in " + str(tmp_path)):
        resolve_task_data("hellaswag", [tmp_path])
    with pytest.raises(CompressError, match="does not exist"):
        resolve_task_data("hellaswag", None, tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"activity_label": "x"}\n')
    cfg = task_config(resolve_task_data("hellaswag", None, bad))
    with pytest.raises(CompressError, match="row 1 is not in the expected format"):
        cfg["custom_dataset"](**cfg["dataset_kwargs"])
    assert set(ALL_TASKS) == {*LM_EVAL_TASKS, *SOCIALBENCH_TASKS, "ppl"}


def test_gsm8k_fewshot_split_follows_train_file(tmp_path, shared_data):
    # shared/data/gsm8k has train.jsonl: the few-shot examples come from it, never from the test split
    assert task_config(resolve_task_data("gsm8k", [shared_data]))["fewshot_split"] == "train"
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "1+1?", "answer": "2\\n#### 2"}\n')
    assert task_config(resolve_task_data("gsm8k", [tmp_path]))["fewshot_split"] == "test"
    for n in ("test", "train"):
        (tmp_path / "gsm8k" / f"{n}.jsonl").write_text('{"question": "1+1?", "answer": "2\\n#### 2"}\n')
    cfg = task_config(resolve_task_data("gsm8k", [tmp_path]))
    assert cfg["fewshot_split"] == "train" and set(cfg["dataset_kwargs"]["files"]) == {"test", "train"}


def test_table_average_and_deltas(tmp_path):
    models = [
        {"name": "dense", "parameters": 1000, "size_on_disk": 2000,
         "results": {"piqa": {"value": 0.70}, "winogrande": {"value": 0.50}, "ppl": {"ppl": 10.0}}},
        {"name": "pruned", "parameters": 800, "size_on_disk": 1500,
         "results": {"piqa": {"value": 0.60}, "winogrande": {"value": 0.55}, "ppl": {"ppl": 12.5}}},
    ]
    t = build_table(models, ["piqa", "winogrande", "ppl"])
    dense, pruned = t["rows"]
    assert math.isclose(dense["average"], 60.0) and math.isclose(pruned["average"], 57.5)
    d = pruned["delta"]
    assert math.isclose(d["piqa"], -10.0) and math.isclose(d["winogrande"], 5.0) and math.isclose(d["average"], -2.5)
    assert math.isclose(d["ppl"], 25.0) and math.isclose(d["parameters"], -20.0) and math.isclose(d["size_on_disk"], -25.0)
    assert "delta" not in dense
    md = markdown(t, ["piqa", "winogrande", "ppl"], {"piqa": "acc_norm", "winogrande": "acc", "ppl": "ppl"})
    assert "| pruned | 60.00 (-10.00) | 55.00 (+5.00) | 12.500 (+25.00%) | 57.50 (-2.50) |" in md
    png = bar_plot(t, ["piqa", "winogrande", "ppl"], tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert average([]) is None
