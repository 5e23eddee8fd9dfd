"""`compress eval persona`: the frozen card fixture, the rates from a rule-following (mock) judge, the
judge's reading and scoring, resume, and the command end to end on tiny real models."""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil

import pytest
import torch

from compress.cli import main
from compress.errors import CompressError
from compress.eval.persona import metrics
from compress.eval.persona.cards import CARDS_FILE, LEVELS, generate_cards, load_cards
from compress.eval.persona.dialogue import CHAT, PLAIN, clean_reply, plain_prompt, schedule
from compress.eval.persona.judge import (
    LETTERS,
    UNCLEAR,
    expected_letter,
    option_logprobs,
    question,
    read_answer,
)
from compress.eval.persona.run import read_topics
from tests.fixtures import make_tiny_model

PINNED = "14097d28171052f65ad91f5ad0fee9230c83b0784b358b511f80bb6e054d130b"


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("persona") / "tiny", "llama", layers=2, seed=11)


def test_card_fixture_is_frozen_and_hashed():
    doc = json.loads(CARDS_FILE.read_text(encoding="utf-8"))
    canon = json.dumps(doc["cards"], sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    assert hashlib.sha256(canon).hexdigest() == doc["sha256"] == PINNED
    assert generate_cards(doc["seed"]) == doc["cards"]  # the shipped file is the generator's output
    grid = {(c["trait"], c["polarity"], c["level"]) for c in doc["cards"]}
    assert len(doc["cards"]) == 30 and len(grid) == 30 and len({c["name"] for c in doc["cards"]}) == 30
    assert all(f"You are {c['level']} " in c["persona"] for c in doc["cards"])
    assert load_cards()["sha256"] == PINNED


def test_card_file_hash_mismatch(tmp_path, tiny, capsys):
    doc = json.loads(CARDS_FILE.read_text(encoding="utf-8"))
    doc["cards"][3]["name"] = "Someone Else"
    bad = tmp_path / "cards.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(CompressError, match="does not match its cards"):
        load_cards(bad)
    assert main(["eval", "persona", str(tiny), "--judge", str(tiny), "--cards", str(bad), "-o", str(tmp_path / "o")]) == 1
    line = _err(capsys)
    assert line.startswith(f"error: card file {bad}: its sha256 {PINNED} does not match its cards")
    assert not (tmp_path / "o").exists()


def _judged(rule) -> list[dict]:
    """Every card once (15 dialogues); the judge answers by `rule(card, half) -> letter`."""
    cards = load_cards()["cards"]
    out = []
    for d in schedule(cards, read_topics()["topics"], 15, seed=1):
        d = {**d, "verdicts": [{"answer": rule(c, False), "answer_half": rule(c, True)} for c in d["cards"]]}
        out.append(d)
    return out


def test_rates_from_a_rule_following_judge():
    """Mock judge: right for every high-polarity card, 'unclear' for the low ones; on the first half
    right only for 'extremely' cards. By hand: 15 of 30 right; per trait 3 of 6; high 100 %, low 0 %;
    per level 5 of 10; unclear 50 %; first half 10 of 30; drift +1/6."""
    def rule(card, half):
        if half:
            return expected_letter(card) if card["level"] == "extremely" else UNCLEAR
        return expected_letter(card) if card["polarity"] == "high" else UNCLEAR

    dialogues = _judged(rule)
    rows = [r for d in dialogues for r in metrics.units(d)]
    r = metrics.rates(rows)
    assert r["n"] == 30 and r["success"] == 0.5 and r["unclear"] == 0.5 and r["unreadable"] == 0.0
    assert all(v == {"n": 6, "success": 0.5} for v in r["by_trait"].values())
    assert r["by_polarity"] == {"high": {"n": 15, "success": 1.0}, "low": {"n": 15, "success": 0.0}}
    assert all(r["by_level"][lv] == {"n": 10, "success": 0.5} for lv in LEVELS)
    assert r["success_half"] == pytest.approx(10 / 30) and r["drift"] == pytest.approx(0.5 - 10 / 30)
    both_high = sum(all(c["polarity"] == "high" for c in d["cards"]) for d in dialogues)
    assert sum(metrics.passes(d) for d in dialogues) == both_high
    assert metrics.CHANCE == pytest.approx(1 / 11)


def test_schedule_and_options():
    cards = load_cards()["cards"]
    topics = read_topics()["topics"]
    s = schedule(cards, topics, 15, seed=42)
    assert sorted(c["id"] for d in s for c in d["cards"]) == sorted(c["id"] for c in cards)
    assert s == schedule(cards, topics, 15, seed=42) and s != schedule(cards, topics, 15, seed=43)
    assert len(schedule(cards, topics, 40, seed=42)) == 40 and len({d["topic"]["id"] for d in s}) == 12
    assert [expected_letter(c) for c in cards[:6]] == ["A", "A", "A", "B", "B", "B"] and len(LETTERS) == 11
    q = question({**s[0], "turns": [{"speaker": s[0]["cards"][0]["name"], "text": "hi"},
                                    {"speaker": s[0]["cards"][1]["name"], "text": "hello"}]}, 1, upto=1)
    assert "hello" not in q and f"does {s[0]['cards'][1]['name']} show" in q and "K. unclear" in q
    assert s[0]["cards"][0]["persona"] not in q  # the judge never sees the cards


@pytest.mark.parametrize("text,letter", [("B", "B"), ("Answer: J", "J"), ("I think K fits best", "K"),
                                         ("The answer is (C).", "C"), ("A good guess", None), ("", None),
                                         ("hmm", None)])
def test_judge_reads_its_answer(text, letter):
    assert read_answer(text) == letter


def test_clean_reply_and_plain_transcript():
    assert clean_reply("Ann: Hello there!\nBob: hi", "Ann", "Bob", CHAT) == "Hello there!"
    assert clean_reply("Sure.\n\nAnother paragraph", "Ann", "Bob", CHAT) == "Sure."
    assert clean_reply(" Fine, thanks. \nMore", "Ann", "Bob", PLAIN) == "Fine, thanks."
    cards = load_cards()["cards"]
    setup = {"cards": [cards[0], cards[5]], "topic": {"topic": "dogs"}}
    p = plain_prompt(setup, ["Hi.", "Hello."], 0)
    assert p.endswith(f"\n\n{cards[0]['name']}: Hi.\n{cards[5]['name']}: Hello.\n{cards[0]['name']}:")


def test_option_logprobs_against_lm_eval(tiny):
    """Our judge scoring against lm-eval's own HFLM.loglikelihood on the same (context, continuation)
    pairs; single-token continuations (one forward pass) and multi-token ones."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny)
    context = "Below is a conversation.\nWhich trait?\nA. one\nB. two\nAnswer:"
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=1)
    for conts in ([" A", " B", " K"], [" unclear", " A", " openness"]):
        ours = option_logprobs(model, tok, context, conts, templated=False)
        reqs = [Instance(request_type="loglikelihood", doc={}, arguments=(context, c), idx=i) for i, c in enumerate(conts)]
        theirs = [ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)]
        assert ours == pytest.approx(theirs, abs=1e-4)


def test_judge_without_chat_template(tiny, tmp_path, capsys):
    base = tmp_path / "base"
    shutil.copytree(tiny, base)
    cfg = json.loads((base / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(cfg))
    (base / "chat_template.jinja").unlink(missing_ok=True)
    assert main(["eval", "persona", str(tiny), "--judge", str(base), "-o", str(tmp_path / "o")]) == 1
    assert _err(capsys) == (f"error: judge {base} has no chat template: a judge is asked its question as a chat turn; "
                            "use an instruction-tuned judge, or pass --judge-template plain to ask it in plain text")
    out = tmp_path / "plain"
    assert main(["eval", "persona", str(base), "--judge", str(base), "--judge-template", "plain", "--dialogues", "1",
                 "--turns", "2", "--max-new-tokens", "4", "--validity-dialogues", "1", "-o", str(out)]) == 0
    res = json.loads((out / "persona.json").read_text())
    assert res["judge"]["template"] == "plain" and res["models"][0]["format"] == PLAIN
    assert main(["eval", "persona", str(tiny), "--judge", "openai:gpt-4o", "-o", str(tmp_path / "x")]) == 1
    assert "needs network access" in _err(capsys)


def test_persona_end_to_end_and_resume(tiny, tmp_path, monkeypatch):
    other = make_tiny_model(tmp_path / "other", "llama", layers=2, seed=12)
    out = tmp_path / "run"
    argv = ["eval", "persona", str(tiny), str(other), "--judge", str(tiny), "--dialogues", "3", "--turns", "4",
            "--max-new-tokens", "6", "--validity-dialogues", "2", "--batch-size", "2", "-o", str(out)]
    assert main(argv) == 0
    res = json.loads((out / "persona.json").read_text())
    dialogues = [json.loads(x) for x in (out / "dialogues.jsonl").read_text().splitlines()]
    passing = [json.loads(x) for x in (out / "psyplay.jsonl").read_text().splitlines()]
    assert len(dialogues) == 6 and len((out / "validity.jsonl").read_text().splitlines()) == 2
    assert [d["id"] for d in passing] == [d["id"] for d in dialogues if metrics.passes(d)]
    assert all(len(d["turns"]) == 4 and len(d["verdicts"]) == 2 for d in dialogues)
    a, b = res["models"]
    rows = [r for d in dialogues if d["model"] == "tiny" for r in metrics.units(d)]
    assert a["rates"]["success"] == pytest.approx(sum(r["success"] for r in rows) / 6)
    assert res["validity"]["threshold"] == 0.9 and "the judge, not the model, is the bottleneck" in (
        out / "results.md").read_text() or res["validity"]["accuracy"] >= 0.9
    assert b["delta_ci"]["persona"]["n"] == 6 and res["cards"]["sha256"] == PINNED
    assert not (tmp_path / "run.persona-state.jsonl").exists()
    # resume: an interrupted run's state is reused, nothing is generated or judged again
    from compress.eval.persona import run as prun
    state_file = tmp_path / "again.persona-state.jsonl"
    calls = []
    real_ask = prun.ask
    monkeypatch.setattr(prun, "ask", lambda *a, **k: calls.append(1) or real_ask(*a, **k))
    monkeypatch.setattr(prun, "atomic_dir", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert main(argv[:-1] + [str(tmp_path / "again")]) == 130  # interrupted while writing: nothing written
    n_first = len(calls)
    assert state_file.is_file() and not (tmp_path / "again").exists()
    # (2 validity + 2 x 3) dialogues x 2 speakers x (whole, first half), less the 2 x 2 x 2 questions the judge
    # (the first model itself) was already asked about the same two dialogues: cached by their text
    assert n_first == (2 + 6) * 2 * 2 - 2 * 2 * 2
    monkeypatch.undo()
    monkeypatch.setattr(prun, "ask", lambda *a, **k: (_ for _ in ()).throw(AssertionError("judged again")))
    monkeypatch.setattr(importlib.import_module("compress.model.load"), "load_model",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    assert main(argv[:-1] + [str(tmp_path / "again"), "--resume"]) == 0
    again = json.loads((tmp_path / "again" / "persona.json").read_text())
    assert [m["rates"] for m in again["models"]] == [m["rates"] for m in res["models"]]
    assert (tmp_path / "again" / "dialogues.jsonl").read_text() == (out / "dialogues.jsonl").read_text()
    assert not state_file.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_device_cuda_refused_without_gpu(tiny, tmp_path, capsys):
    """`--device cuda` on a CPU-only machine: one error line, exit 1, nothing written, for the persona
    check and for SocialBench tasks of `compress eval` alike (the code paths take the device from the
    option: models are loaded on it, lm-eval's wrapper and generation follow the model's device)."""
    out = tmp_path / "o"
    assert main(["eval", "persona", str(tiny), "--judge", str(tiny), "--device", "cuda", "-o", str(out)]) == 1
    line = _err(capsys)
    assert line.startswith("error: ") and "no CUDA GPU is available" in line and "--device cpu" in line
    data = tmp_path / "ep.json"
    data.write_text("[]")
    assert main(["eval", str(tiny), "--tasks", "socialbench_ep_situ_en", "--task-data", f"socialbench_ep={data}",
                 "--device", "cuda:0", "-o", str(out)]) == 1
    line = _err(capsys)
    assert line.startswith("error: ") and "no CUDA GPU is available" in line
    assert not out.exists() and not list(tmp_path.glob("o*"))


def test_constant_judge_is_flagged():
    """A judge that answers 'A' (Openness high) to every question: its top answer is A for 100 % of the
    units; its success is the share of Openness-high speakers (3 of 30 cards, each played once), and the
    validity line says the answer is almost constant. A rule-following judge is not flagged."""
    from compress.eval.persona.run import _rates_markdown, _validity_markdown

    rows = [r for d in _judged(lambda c, half: "A") for r in metrics.units(d)]
    r = metrics.rates(rows)
    assert r["top_answer"] == {"letter": "A", "share": 1.0}
    assert r["success"] == pytest.approx(3 / 30)
    line = _validity_markdown({"accuracy": r["success"], "threshold": 0.9, "rates": r, "judge_is_bottleneck": True}, 15)
    assert "The judge answered A (O high) to 100.0% of these questions" in line
    table = _rates_markdown([{"name": "m", "rates": r, "passing": 0, "trait_leaks": 0}])
    assert table.splitlines()[-1].endswith("| A 100.0 |")
    right = [r for d in _judged(lambda c, half: expected_letter(c)) for r in metrics.units(d)]
    rr = metrics.rates(right)
    assert rr["top_answer"]["share"] == pytest.approx(3 / 30)  # ten options, three cards each
    ok = _validity_markdown({"accuracy": 1.0, "threshold": 0.9, "rates": rr, "judge_is_bottleneck": False}, 15)
    assert "answered" not in ok and "bottleneck" not in ok
    assert metrics.top_answer([{"answer": None}]) is None
    tie = metrics.top_answer([{"answer": "C"}, {"answer": "B"}, {"answer": None}])
    assert tie == {"letter": "B", "share": pytest.approx(1 / 3)}
