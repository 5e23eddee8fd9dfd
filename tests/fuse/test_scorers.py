"""Verifiers against hand-written cases; reward models against an independent transformers computation."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
import torch

from compress.errors import CompressError
from compress.fuse.scorers import (
    ChoiceVerifier,
    ClosestChoiceVerifier,
    GSM8KVerifier,
    ImplicitReward,
    RewardModel,
    choice_label,
    closest_choice,
    final_number,
    gsm8k_gold,
    make_verifier,
    reward_model_head,
)


def test_gsm8k_final_number_and_gold():
    assert final_number("So 3 + 4 = 7.\n#### 7") == Decimal(7)
    assert final_number("She pays $1,250.50 in total") == Decimal("1250.50")
    assert final_number("#### 12 apples, then 3 more") == Decimal(12)  # the first number after the last ####
    assert final_number("no digits here") is None
    assert gsm8k_gold("Janet sells 9 eggs.\n#### 18") == Decimal(18)
    assert gsm8k_gold("-3") == Decimal(-3) and gsm8k_gold(42) == Decimal(42)


def test_gsm8k_verifier_scores_and_refuses_free_text():
    v = GSM8KVerifier()
    refs = ["... #### 18", "#### 1,000", "#### 0.5"]
    got = v.score([""] * 3, ["The answer is 18.", "#### 1000", "It is 0.50 dollars"], refs)
    assert got == [1.0, 1.0, 1.0]
    assert v.score([""] * 2, ["#### 17", "18 then 19"], ["#### 18", "#### 18"]) == [0.0, 0.0]
    with pytest.raises(CompressError, match="cannot score free text"):
        v.check(["#### 3", "a helpful, harmless answer"])
    assert v.kind == "verifier" and "1 =" in v.units


@pytest.mark.parametrize(("text", "label"), [
    ("B", "B"), ("B. The sun", "B"), ("(C)", "C"), ("The answer is D.", "D"), ("Answer: (A) water", "A"),
    ("A plant needs light, so the answer is C", "C"), ("A plant needs light", None), ("I think (B) is right", "B"),
    ("the answer is a plant", None), ("", None),
])
def test_choice_label(text, label):
    assert choice_label(text) == label


def test_choice_label_by_option_text_and_digits():
    assert choice_label("It is the sun that heats it", choices={"A": "the moon", "B": "the sun"}) == "B"
    assert choice_label("2", labels=("1", "2", "3", "4")) == "2"
    yes_no = {"A": "yes", "B": "no"}
    assert choice_label("No, it is not.", choices=yes_no) == "B"
    assert choice_label("Yes, I know it is not", choices=yes_no) == "A"  # whole words: 'know' and 'not' hold no 'no'
    assert choice_label("yes or no", choices=yes_no) is None
    # ARC options often end with a full stop; the answer names the option without it
    arc = {"A": "soil.", "B": "minerals.", "C": "food.", "D": "water."}
    assert choice_label("Plants make food", choices=arc) == "C"
    assert choice_label("food.", choices=arc) == "C"
    v = ChoiceVerifier()
    assert v.score(["", "", ""], ["B", "1. first we note", "3"], ["B", "2", "3"]) == [1.0, 0.0, 1.0]
    with pytest.raises(CompressError, match="cannot score free text"):
        v.check(["the sun"])
    assert make_verifier("none") is None
    with pytest.raises(CompressError, match="unknown verifier"):
        make_verifier("python")


def test_closest_choice_is_difflibs_best_ratio_on_the_first_line():
    choices = {"A": "to produce glucose", "B": "to keep the cell rigid", "C": "to make the cell divide"}
    # 'make glucose' vs each option: ratio 2M/(|a|+|b|) computed by hand from the matching blocks
    assert closest_choice("\n  make glucose\nto keep the cell rigid", choices) == "A"  # first non-empty line only
    assert closest_choice("To keep the cell RIGID.", choices) == "B"
    assert closest_choice("   \n", choices) is None
    assert closest_choice("xyz", {"A": "abc", "B": "abd"}) == "A"  # both ratio 0: the first option
    v = ClosestChoiceVerifier()
    ref = {"answer": "C", "choices": choices}
    assert v.score(["", "", ""], ["make the cell divide", "glucose", ""], [ref, ref, ref]) == [1.0, 0.0, 0.0]
    with pytest.raises(CompressError, match="option texts"):
        v.check(["C"])
    assert isinstance(make_verifier("closest"), ClosestChoiceVerifier)


def _rm_folder(tmp_path, num_labels=1):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from tests.fixtures import tiny_tokenizer

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512, num_labels=num_labels, pad_token_id=0,
                      bos_token_id=1, eos_token_id=2)
    model = LlamaForSequenceClassification(cfg)
    path = tmp_path / f"rm{num_labels}"
    model.save_pretrained(str(path))
    tiny_tokenizer().save_pretrained(str(path))
    return path, model.eval()


def test_reward_model_matches_transformers_one_by_one(tmp_path):
    path, model = _rm_folder(tmp_path)
    rm = RewardModel(path, batch_size=3)
    prompts = ["What is heat?", [{"role": "user", "content": "Name a river"}], "Why?", "x"]
    resps = ["Energy that moves.", "The Nile", "Because of the weather in the valley of the river", "y"]
    got = rm.score(prompts, resps, [None] * 4)
    tok = rm.tok
    for p, r, g in zip(prompts, resps, got, strict=True):
        msgs = [{"role": "user", "content": p}] if isinstance(p, str) else p
        text = tok.apply_chat_template(msgs + [{"role": "assistant", "content": r}], tokenize=False)
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            ref = model(input_ids=ids).logits[0, 0].item()  # one unpadded sequence: no padding rule involved
        assert g == pytest.approx(ref, abs=1e-5)
    assert rm.kind == "reward" and "logit" in rm.units


def test_reward_model_folder_checks(tmp_path, tiny_llama):
    with pytest.raises(CompressError, match="not a sequence-classification reward model"):
        reward_model_head(tiny_llama)
    with pytest.raises(CompressError, match="no config.json"):
        reward_model_head(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CompressError, match="not readable JSON"):
        reward_model_head(tmp_path)
    path, _ = _rm_folder(tmp_path, num_labels=3)
    assert reward_model_head(path) == ("LlamaForSequenceClassification", 3)
    with pytest.raises(CompressError, match="3 outputs"):
        RewardModel(path)
    assert len(RewardModel(path, label=2).score(["a"], ["b"], [None])) == 1
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForSequenceClassification"]


def test_implicit_reward_is_the_summed_log_ratio(distill_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ir = ImplicitReward(distill_models["teacher"], distill_models["ref"], batch_size=2)
    prompts, resps = ["a question", "another longer question here"], ["short", "a somewhat longer answer"]
    got = ir.score(prompts, resps, [None, None])
    tok = AutoTokenizer.from_pretrained(distill_models["teacher"])

    def logp(path, p, r):
        m = AutoModelForCausalLM.from_pretrained(path).eval()
        head = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                       tokenize=False)
        a, b = tok(head, add_special_tokens=False)["input_ids"], tok(full, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([b])
        with torch.no_grad():
            lp = torch.log_softmax(m(ids).logits[0].double(), -1)
        return sum(lp[t - 1, b[t]].item() for t in range(len(a), len(b)))

    for p, r, g in zip(prompts, resps, got, strict=True):
        want = logp(distill_models["teacher"], p, r) - logp(distill_models["ref"], p, r)
        assert g == pytest.approx(want, abs=1e-3)
    assert "nats" in ir.units
