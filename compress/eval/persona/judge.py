"""The judge: reads a dialogue (never the cards) and answers, for one speaker, which Big Five trait and
polarity that speaker shows, out of 10 trait x polarity options plus "unclear" (letters A-K).

- `loglik` (default): the option letters are scored by their log-probability right after the
  question; the answer is the most likely one. Deterministic, and every question gets an answer.
- `generative`: the judge writes (greedy, 16 tokens); its text is kept, and read with the explicit
  answer patterns, then the first standalone capital A-K that is not the word "A" or "I" ("I think",
  "A good"); nothing readable counts as unreadable (not a success).
A judge is asked as one user turn of its chat template. A judge without one is refused, unless
`--judge-template plain` asks for the question as plain text ending in "Answer:" (the letters then
follow a space); the judge's numbers are then labelled so.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from compress.errors import CompressError
from compress.eval.persona.cards import POLARITIES, TRAITS
from compress.eval.socialbench.scoring import explicit_letters

GLOSS = {("O", "high"): "curious, imaginative", ("O", "low"): "conventional, prefers the familiar",
         ("C", "high"): "organised, dependable", ("C", "low"): "disorganised, careless",
         ("E", "high"): "outgoing, talkative", ("E", "low"): "reserved, quiet",
         ("A", "high"): "kind, cooperative", ("A", "low"): "critical, uncooperative",
         ("N", "high"): "anxious, easily upset", ("N", "low"): "calm, emotionally stable"}
OPTIONS: list[tuple[str, str] | None] = [(t, p) for t in TRAITS for p in POLARITIES] + [None]
LETTERS = "ABCDEFGHIJK"
UNCLEAR = LETTERS[-1]
SPAN = "A-K"
_STANDALONE = re.compile(rf"(?<!\w)([{SPAN}])(?!\w)")
_WORD_LETTER = re.compile(r"[AI]\s+[a-z]")  # "A good ...", "I think ...": a word, not an option
JUDGE_NEW_TOKENS = 16


def option_text(opt: tuple[str, str] | None) -> str:
    if opt is None:
        return "unclear (no trait stands out)"
    return f"{opt[1]} {TRAITS[opt[0]]} ({GLOSS[opt]})"


def expected_letter(card: dict[str, Any]) -> str:
    return LETTERS[OPTIONS.index((card["trait"], card["polarity"]))]


def letter_option(letter: str | None) -> tuple[str, str] | None:
    return OPTIONS[LETTERS.index(letter)] if letter and letter in LETTERS else None


def question(dialogue: dict[str, Any], speaker: int, upto: int | None = None) -> str:
    """The judge's question about `speaker` on the first `upto` turns (all by default)."""
    names = [c["name"] for c in dialogue["cards"]]
    lines = "".join(f"{t['speaker']}: {t['text']}\n" for t in dialogue["turns"][:upto])
    opts = "".join(f"{LETTERS[i]}. {option_text(o)}\n" for i, o in enumerate(OPTIONS))
    return (f"Below is a conversation between {names[0]} and {names[1]}.\n\n{lines}\n"
            f"Which personality trait does {names[speaker]} show most clearly in this conversation?\n{opts}"
            f"Answer with the letter of one option.")


def check_judge_template(tokenizer: Any, template: str, judge: str) -> None:
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise CompressError(f"judge {judge} has no chat template: a judge is asked its question as a chat turn; "
                            "use an instruction-tuned judge, or pass --judge-template plain to ask it in plain text")


def render(tokenizer: Any, text: str, template: str) -> tuple[str, bool]:
    """(context, whether it is chat-templated)."""
    if template == "chat":
        msgs = [{"role": "user", "content": text}]
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True), True
    return f"{text}\nAnswer:", False


def _encode(tokenizer: Any, text: str, templated: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=not templated)["input_ids"]


@torch.no_grad()
def option_logprobs(model: torch.nn.Module, tokenizer: Any, context: str, continuations: list[str],
                    templated: bool) -> list[float]:
    """log P(continuation | context) for each continuation, the continuation's tokens being those the
    tokenizer gives context + continuation beyond the context's own (the continuation alone if the
    context's tokens are not a prefix). One forward pass when every continuation is one token."""
    dev = next(model.parameters()).device
    ctx = _encode(tokenizer, context, templated)
    conts = []
    for c in continuations:
        full = _encode(tokenizer, context + c, templated)
        conts.append(full[len(ctx):] if full[:len(ctx)] == ctx and len(full) > len(ctx)
                     else tokenizer(c, add_special_tokens=False)["input_ids"])
    if all(len(c) == 1 for c in conts):
        logits = model(torch.tensor([ctx], device=dev)).logits[0, -1].float()
        lp = torch.log_softmax(logits, -1)
        return [float(lp[c[0]]) for c in conts]
    out = []
    for c in conts:
        ids = torch.tensor([ctx + c], device=dev)
        lp = torch.log_softmax(model(ids).logits[0, len(ctx) - 1:-1].float(), -1)
        out.append(float(lp.gather(1, torch.tensor(c, device=dev)[:, None]).sum()))
    return out


def read_answer(text: str | None) -> str | None:
    """The judge's letter from its text, or None."""
    if not text or not text.strip():
        return None
    hit = explicit_letters(text, SPAN)
    if hit and len(hit[0]) == 1:
        return hit[0][0]
    for m in _STANDALONE.finditer(text):
        if not _WORD_LETTER.match(text, m.start()):
            return m.group(1)
    return None


def ask(model: torch.nn.Module, tokenizer: Any, text: str, *, mode: str, template: str) -> dict[str, Any]:
    """One judgement: {answer (a letter or None), and logprobs or raw text}."""
    context, templated = render(tokenizer, text, template)
    if mode == "loglik":
        conts = list(LETTERS) if templated else [f" {x}" for x in LETTERS]
        lps = option_logprobs(model, tokenizer, context, conts, templated)
        best = max(range(len(lps)), key=lambda i: (lps[i], -i))
        return {"answer": LETTERS[best], "logprobs": [round(x, 5) for x in lps]}
    from compress.model.generate import generate_responses

    raw = generate_responses(model, tokenizer, [_encode(tokenizer, context, templated)],
                             max_new_tokens=JUDGE_NEW_TOKENS, batch_size=1)[0]
    return {"answer": read_answer(raw), "raw": raw}
