"""Scorers of sampled responses: verifiers (right or wrong against a reference) and reward models.

One interface, used by `compress fuse data` (FuseChat-3.0 / WRPO data) and by `compress fuse`
methods that judge generated outputs (ProFuser's inference mode):

    scorer.check(references)                         # refuses a task the scorer cannot score
    scorer.score(prompts, responses, references)     # -> list[float], one per response

Every scorer states its `units` (a sentence recorded in the data report) and its `kind`:
- `verifier`: 1.0 right, 0.0 wrong. `GSM8KVerifier` (the number after `####` in the reference against
  the response's final number) and `ChoiceVerifier` (a multiple-choice letter).
- `reward`: an unbounded real number whose scale belongs to that scorer alone (a margin in one
  reward model's units means nothing for another). `ImplicitReward` (a DPO model against its
  reference, in nats) and `RewardModel` (any sequence-classification model folder, in its logits).

Prompts are strings or chat message lists (`compress.fuse.render`); references are whatever the task
gives (the GSM8K answer text, a choice letter); reward scorers ignore them.
"""

from __future__ import annotations

import json
import os
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal, Protocol

from compress.errors import CompressError

Kind = Literal["verifier", "reward"]


class Scorer(Protocol):
    name: str
    kind: Kind
    units: str

    def check(self, references: list[Any]) -> None: ...

    def score(self, prompts: list[Any], responses: list[str], references: list[Any]) -> list[float]: ...


# ------------------------------------------------------------------------------------------ GSM8K
_NUMBER = re.compile(r"-?\$?\s?\d[\d,]*(?:\.\d+)?")


def parse_number(text: str) -> Decimal | None:
    """'$1,234.50' -> Decimal('1234.50'); None when `text` holds no number."""
    m = _NUMBER.search(text)
    if m is None:
        return None
    s = m.group(0).replace("$", "").replace(",", "").replace(" ", "")
    try:
        return Decimal(s)
    except InvalidOperation:
        return None


def final_number(text: str) -> Decimal | None:
    """The answer a response gives: the first number after its last `####`, else its last number."""
    if "####" in text:
        return parse_number(text.rsplit("####", 1)[1])
    found = _NUMBER.findall(text)
    return parse_number(found[-1]) if found else None


def gsm8k_gold(reference: Any) -> Decimal:
    """The gold number of a GSM8K reference: after `####` in a worked answer, or a bare number."""
    if isinstance(reference, (int, float)) and not isinstance(reference, bool):
        return Decimal(str(reference))
    if not isinstance(reference, str):
        raise CompressError(f"the GSM8K verifier needs a reference answer text or number, got {type(reference).__name__}")
    gold = parse_number(reference.rsplit("####", 1)[1]) if "####" in reference else (
        parse_number(reference) if _NUMBER.fullmatch(reference.strip()) else None)
    if gold is None:
        raise CompressError(f"the GSM8K verifier cannot score free text: the reference {reference[:60]!r} has no "
                            "'#### <number>' answer (use a reward model for free-text tasks)")
    return gold


class GSM8KVerifier:
    """Right when the response's final number equals the reference's number after `####` (numerically)."""

    name = "gsm8k"
    kind: Kind = "verifier"
    units = ("1 = the response's final number (after its last '####', else its last number) equals the "
             "reference's number after '####'; 0 otherwise")

    def check(self, references: list[Any]) -> None:
        for r in references:
            gsm8k_gold(r)

    def score(self, prompts: list[Any], responses: list[str], references: list[Any]) -> list[float]:
        out = []
        for resp, ref in zip(responses, references, strict=True):
            got = final_number(resp)
            out.append(1.0 if got is not None and got == gsm8k_gold(ref) else 0.0)
        return out


# ------------------------------------------------------------------------------ multiple choice
LETTERS = tuple("ABCDEFGHIJ")
DIGITS = tuple("123456789")
_LABEL = r"([A-J]|[1-9])"
_ANSWER_IS = re.compile(r"(?i:answer\s*(?:is|:)\s*(?:option\s*)?)[\(\[*\s]*" + _LABEL + r"\b")
_LEADING = re.compile(r"^\W*" + _LABEL + r"(?:\s*$|[.):,\]*]|\s*\n)")
_PAREN = re.compile(r"\(" + _LABEL + r"\)")


def choice_label(text: str, labels: tuple[str, ...] = LETTERS, choices: dict[str, str] | None = None) -> str | None:
    """The option label a response picks, or None. In order: 'answer is X' / 'answer: X'; a label that
    opens the response on its own ('B', 'B.', '(B)', 'B)'); a single '(X)' in the text; with `choices`
    ({label: option text}), the one option whose text (less a final '.', '!', '?', ';' or ',') the response contains as
    whole words. A label must be in `labels`
    ('A plant ...' is an article, not option A)."""
    for pat in (_ANSWER_IS, _LEADING):
        m = pat.search(text.strip())
        if m and m.group(1).upper() in labels:
            return m.group(1).upper()
    found = {m.upper() for m in _PAREN.findall(text) if m.upper() in labels}
    if len(found) == 1:
        return found.pop()
    if choices:
        low = text.lower()
        words = {k: v.strip().rstrip(".!?;,").strip().lower() for k, v in choices.items()}  # 'soil.' is named by 'soil'
        hits = [k for k, v in words.items() if v and re.search(r"(?<!\w)" + re.escape(v) + r"(?!\w)", low)]
        if len(hits) == 1:
            return hits[0]
    return None


def choice_gold(reference: Any) -> tuple[str, dict[str, str] | None]:
    """(gold label, {label: option text} or None) of a reference: a label string, or {answer, choices}."""
    choices = None
    if isinstance(reference, dict):
        choices = reference.get("choices")
        if choices is not None and not (isinstance(choices, dict) and all(isinstance(v, str) for v in choices.values())):
            raise CompressError("a multiple-choice reference's 'choices' must map labels to option texts")
        reference = reference.get("answer")
    if isinstance(reference, str) and re.fullmatch(_LABEL, reference.strip().upper()):
        return reference.strip().upper(), ({str(k).upper(): v for k, v in choices.items()} if choices else None)
    raise CompressError(f"the multiple-choice verifier cannot score free text: the reference {str(reference)[:60]!r} "
                        "is not an option label (A-J or 1-9)")


class ChoiceVerifier:
    """Right when the option label the response picks (`choice_label`) is the reference's label. Without
    the options' texts, the labels looked for are letters when the gold label is a letter, digits otherwise."""

    name = "choice"
    kind: Kind = "verifier"
    units = "1 = the option label the response picks equals the reference label; 0 otherwise (no label found: 0)"

    def check(self, references: list[Any]) -> None:
        for r in references:
            choice_gold(r)

    def score(self, prompts: list[Any], responses: list[str], references: list[Any]) -> list[float]:
        out = []
        for resp, ref in zip(responses, references, strict=True):
            gold, choices = choice_gold(ref)
            labels = tuple(choices) if choices else (LETTERS if gold.isalpha() else DIGITS)
            out.append(1.0 if choice_label(resp, labels, choices) == gold else 0.0)
        return out


def closest_choice(text: str, choices: dict[str, str]) -> str | None:
    """The label of the option whose text is most similar to the response's first non-empty line:
    argmax over options of difflib's ratio 2·M/(|a|+|b|) (M = matched characters), lower-cased; the first
    option wins a tie; None for an empty response."""
    import difflib

    line = next((x.strip().lower() for x in text.splitlines() if x.strip()), "")
    if not line:
        return None
    ratios = {k: difflib.SequenceMatcher(None, line, v.strip().lower()).ratio() for k, v in choices.items()}
    return max(ratios, key=lambda k: ratios[k])


class ClosestChoiceVerifier:
    """Right when the option whose text is closest to the response's first line (`closest_choice`) is the
    reference's option: multiple choice answered in words without the options being labelled (as
    cool-fusion's ARC-Easy benchmark scores it). Needs the options' texts in every reference."""

    name = "closest"
    kind: Kind = "verifier"
    units = ("1 = the option whose text is closest (difflib ratio) to the response's first line is the reference's "
             "option; 0 otherwise (empty response: 0)")

    def check(self, references: list[Any]) -> None:
        for r in references:
            if not choice_gold(r)[1]:
                raise CompressError("the closest-option verifier needs each reference's option texts "
                                    "({'answer': label, 'choices': {label: text}})")

    def score(self, prompts: list[Any], responses: list[str], references: list[Any]) -> list[float]:
        out = []
        for resp, ref in zip(responses, references, strict=True):
            gold, choices = choice_gold(ref)
            out.append(1.0 if choices and closest_choice(resp, choices) == gold else 0.0)
        return out


VERIFIERS = {"gsm8k": GSM8KVerifier, "choice": ChoiceVerifier, "closest": ClosestChoiceVerifier}


# ------------------------------------------------------------------------------ model-based scores
def _batches(n: int, size: int):
    for b in range(0, n, size):
        yield range(b, min(n, b + size))


def summed_logps(model, rendering, prompts: list[Any], responses: list[str], batch_size: int = 8) -> list[float]:
    """Σ_t log π(y_t | x, y_<t) over each response's tokens (end-of-turn included), prompts rendered by
    `rendering`. Right-padded batches; LM-head rows are computed in chunks, never [B, T, V] at once."""
    import torch

    from compress.data.preference import pack
    from compress.model.logits import decoder_of, token_nll

    tok = rendering.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    dev = next(model.parameters()).device
    out: list[float] = []
    with torch.no_grad():
        for idx in _batches(len(prompts), batch_size):
            b = pack([rendering.prompt_ids(prompts[i], f"prompt {i}") for i in idx],
                     [rendering.response_ids(prompts[i], responses[i], f"prompt {i}") for i in idx], pad)
            body = decoder_of(model)
            hidden = body(input_ids=b.input_ids.to(dev), attention_mask=b.attention_mask.to(dev),
                          use_cache=False).last_hidden_state
            nll = token_nll(model, hidden, b.input_ids)  # [B, T-1]: position t predicts token t+1
            out.extend((-(nll * b.response_mask[:, 1:].to(nll.device))).sum(-1).tolist())
    return out


class ImplicitReward:
    """The DPO implicit reward r(x, y) = log π_dpo(y|x) − log π_ref(y|x), summed over response tokens (nats).

    β is left out (a DPO run's β only rescales it). Both models must share one vocabulary; prompts are
    rendered with the DPO model's chat template, or plain (`{prompt}` + EOS after the response) when it has none,
    as `compress distill train` renders them."""

    name = "implicit"
    kind: Kind = "reward"
    units = "nats: log π_dpo(y|x) − log π_ref(y|x) summed over the response tokens (β not applied)"

    def __init__(self, dpo_model: str | os.PathLike[str], ref_model: str | os.PathLike[str], device: str = "cpu",
                 dtype: str = "auto", batch_size: int = 8):
        from compress.fuse.render import Rendering, has_chat_template
        from compress.model import load_model, load_tokenizer

        tok, ref_tok = load_tokenizer(dpo_model), load_tokenizer(ref_model)
        if tok.get_vocab() != ref_tok.get_vocab():
            raise CompressError(f"the implicit reward needs one vocabulary: {dpo_model} and {ref_model} have different tokenizers")
        self.rendering = Rendering(tok, str(dpo_model), "chat" if has_chat_template(tok) else "plain")
        self.dpo = load_model(dpo_model, device, dtype)
        self.ref = load_model(ref_model, device, dtype)
        self.batch_size = batch_size
        self.name = f"implicit:{Path(dpo_model).name}-{Path(ref_model).name}"

    def check(self, references: list[Any]) -> None:
        return None

    def score(self, prompts: list[Any], responses: list[str], references: list[Any]) -> list[float]:
        a = summed_logps(self.dpo, self.rendering, prompts, responses, self.batch_size)
        b = summed_logps(self.ref, self.rendering, prompts, responses, self.batch_size)
        return [x - y for x, y in zip(a, b, strict=True)]


def reward_model_head(path: str | os.PathLike[str]) -> tuple[str, int]:
    """(architecture, number of labels) of a sequence-classification folder; anything else is refused."""
    p = Path(path)
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise CompressError(f"reward model {path}: no config.json (give a model folder)")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CompressError(f"reward model {path}: config.json is not readable JSON ({e})") from None
    archs = cfg.get("architectures") or []
    cls = [a for a in archs if isinstance(a, str) and a.endswith("ForSequenceClassification")]
    if not cls:
        raise CompressError(f"{path} is not a sequence-classification reward model (its architectures are "
                            f"{', '.join(map(str, archs)) or 'not given'}): give a *ForSequenceClassification folder")
    n = len(cfg.get("id2label") or {}) or int(cfg.get("num_labels", 1) or 1)
    return cls[0], n


class RewardModel:
    """Any sequence-classification model folder as a reward model: the head's logit `label` for (x, y).

    Rendering: the reward model's own chat template (user prompt + assistant response) when it has one;
    otherwise the (prompt, response) text pair of its tokenizer (the convention of DeBERTa-style RMs).
    A head with several outputs needs `label` (the index of the reward output)."""

    kind: Kind = "reward"

    def __init__(self, path: str | os.PathLike[str], device: str = "cpu", dtype: str = "auto", batch_size: int = 8,
                 label: int | None = None, max_length: int | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification

        from compress.fuse.render import has_chat_template
        from compress.model import load_tokenizer
        from compress.model.device import parse_device, parse_dtype

        arch, n = reward_model_head(path)
        if label is None and n != 1:
            raise CompressError(f"reward model {path} has {n} outputs: choose the reward with --reward-label")
        self.label = 0 if label is None else label
        if not 0 <= self.label < n:
            raise CompressError(f"--reward-label {label}: reward model {path} has outputs 0..{n - 1}")
        self.tok = load_tokenizer(path)
        dev = parse_device(device)
        dt = parse_dtype(dtype) or torch.float32
        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True, dtype=dt)
        except Exception as e:  # noqa: BLE001 - any loading failure is one line
            raise CompressError(f"cannot load the reward model {path} ({arch}): {str(e).splitlines()[0]}") from None
        self.model.to(dev).eval()
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        if pad is None:
            raise CompressError(f"reward model {path}: its tokenizer has neither a pad nor an EOS token to pad batches with")
        self.pad = pad
        self.model.config.pad_token_id = pad
        self.chat = has_chat_template(self.tok)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.max_length = min((x for x in (max_length, limit) if x), default=None)
        self.batch_size = batch_size
        self.name = f"rm:{Path(path).name}"
        self.units = (f"the logit of output {self.label} of {Path(path).name} ({arch}) for (prompt, response): "
                      "unbounded, on that model's own scale")

    def check(self, references: list[Any]) -> None:
        return None

    def _encode(self, prompt: Any, response: str, where: str) -> list[int]:
        from compress.fuse.render import as_messages, prompt_text

        if self.chat:
            text = self.tok.apply_chat_template(as_messages(prompt, where) + [{"role": "assistant", "content": response}],
                                                tokenize=False)
            ids = self.tok(text, add_special_tokens=False)["input_ids"]
        else:
            ids = self.tok(prompt_text(prompt, where), response)["input_ids"]
        if self.max_length and len(ids) > self.max_length:
            raise CompressError(f"{where}: prompt + response are {len(ids)} tokens for the reward model, more than its "
                                f"{self.max_length}: shorten the prompts or --max-new-tokens")
        return list(ids)

    def score(self, prompts: list[Any], responses: list[str], references: list[Any]) -> list[float]:
        import math

        import torch

        dev = next(self.model.parameters()).device
        out: list[float] = []
        with torch.no_grad():
            for idx in _batches(len(prompts), self.batch_size):
                seqs = [self._encode(prompts[i], responses[i], f"prompt {i}") for i in idx]
                t = max(len(s) for s in seqs)
                ids = torch.full((len(seqs), t), self.pad, dtype=torch.long)
                att = torch.zeros((len(seqs), t), dtype=torch.long)
                for j, s in enumerate(seqs):
                    ids[j, : len(s)] = torch.tensor(s)
                    att[j, : len(s)] = 1
                logits = self.model(input_ids=ids.to(dev), attention_mask=att.to(dev)).logits.float()
                out.extend(logits[:, self.label].tolist())
        bad = [i for i, v in enumerate(out) if not math.isfinite(v)]
        if bad:
            raise CompressError(f"reward model {self.name} gave a non-finite score ({out[bad[0]]}) for response {bad[0]}")
        return out


def make_verifier(name: str | None) -> GSM8KVerifier | ChoiceVerifier | ClosestChoiceVerifier | None:
    """A verifier by name ('gsm8k', 'choice', 'closest'), or None for 'none' / None."""
    if name in (None, "none"):
        return None
    if name not in VERIFIERS:
        raise CompressError(f"unknown verifier {name!r}: choose one of {', '.join(VERIFIERS)} or none")
    return VERIFIERS[name]()
