"""Preference pairs for distillation and DPO: jsonl -> token ids with response masks.

Each line is one JSON object with:
- `prompt` + `chosen` + `rejected`: strings, or chat messages (`prompt` a list of {role, content},
  `chosen`/`rejected` an assistant message list or a string); `rejected` may be left out for methods
  that read only `chosen` (sft: the SFT sets of `compress fuse data`);
- or only `chosen` + `rejected` as full dialogues: chat message lists sharing the prompt turns, or
  Anthropic HH-RLHF strings (`\\n\\nHuman: ... \\n\\nAssistant: ...`), split at the last
  "\\n\\nAssistant:" into prompt and response;
- optionally `student_response` (written by `compress distill generate`): the student's own greedy
  response, tokenised only from this column (the ADPA release keeps the original `rejected` text
  while its labels are the student's generation: text and labels disagree there).

Everything is rendered with the tokenizer's chat template (strings become one user turn and one
assistant turn); a tokenizer without a template gets plain concatenation plus EOS. Loss is taken on
response tokens only: `Slot.ids` = prompt ids + response ids, `Slot.n_prompt` marks the boundary.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compress.data.text import parse_jsonl
from compress.errors import CompressError

HH_ASSISTANT = "\n\nAssistant:"
HH_HUMAN = "\n\nHuman:"
SLOTS = ("chosen", "rejected", "generated", "source")
# slot <- record field, for records with a `prompt` ("source": WRPO's best source response y_ws)
RESPONSE_FIELDS = (("chosen", "chosen"), ("rejected", "rejected"), ("generated", "student_response"),
                   ("source", "source_chosen"))
LONG_PROMPT = ("skip", "error", "truncate")


@dataclass
class PreferenceExample:
    """One pair: prompt ids and response ids per slot (chosen, rejected, optional generated)."""

    index: int  # position among the kept examples
    line: int  # line number in the file
    prompt: list[int]
    responses: dict[str, list[int]]
    prompt_text: str = ""
    messages: list[dict[str, str]] | None = None  # prompt turns, for generation


@dataclass
class PreferenceData:
    examples: list[PreferenceExample]
    skipped_long: int = 0
    path: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self, slots: tuple[str, ...] = SLOTS) -> str:
        """sha256 of every example's token ids in `slots`: changes with data, tokenizer or truncation."""
        h = hashlib.sha256()
        for ex in self.examples:
            h.update(json.dumps([ex.prompt] + [ex.responses.get(s) for s in slots]).encode())
        return h.hexdigest()

    def has(self, slot: str) -> bool:
        return bool(self.examples) and all(slot in ex.responses for ex in self.examples)


def hh_to_messages(text: str) -> list[dict[str, str]]:
    """Split an HH-RLHF dialogue "\\n\\nHuman: a\\n\\nAssistant: b..." into chat messages."""
    msgs: list[dict[str, str]] = []
    rest = text
    while rest:
        h, a = rest.find(HH_HUMAN), rest.find(HH_ASSISTANT)
        cands = [(i, r, m) for i, r, m in ((h, "user", HH_HUMAN), (a, "assistant", HH_ASSISTANT)) if i >= 0]
        if not cands:
            if msgs:
                msgs[-1]["content"] += rest
            break
        i, role, marker = min(cands)
        if msgs and i > 0:
            msgs[-1]["content"] += rest[:i]
        elif i > 0 and rest[:i].strip():
            msgs.append({"role": "user", "content": rest[:i]})
        msgs.append({"role": role, "content": ""})
        rest = rest[i + len(marker):]
    for m in msgs:
        m["content"] = m["content"].strip()
    return msgs


def _as_messages(value: Any, role: str, where: str, name: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, dict) and "role" in value and "content" in value:
        return [value]
    if isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return list(value)
    raise CompressError(f"{where}: '{name}' must be a string or a list of {{role, content}} messages")


def split_record(rec: Any, where: str) -> tuple[Any, dict[str, Any]]:
    """(prompt, {slot: response}) of one record, prompt/response as strings or message lists."""
    if not isinstance(rec, dict):
        raise CompressError(f"{where}: expected a JSON object with prompt, chosen and rejected")
    if "prompt" in rec and "chosen" in rec:  # a prompt and its responses; rejected is optional (SFT data)
        prompt = rec["prompt"]
        resp = {s: rec[f] for s, f in RESPONSE_FIELDS if f in rec}
        return prompt, resp
    for key in ("chosen", "rejected"):
        if key not in rec:
            raise CompressError(f"{where}: no field {key!r} (a preference pair needs chosen and rejected; it has {', '.join(rec)})")
    chosen, rejected = rec["chosen"], rec["rejected"]
    resp: dict[str, Any] = {}
    if isinstance(chosen, str) and isinstance(rejected, str):
        if HH_ASSISTANT not in chosen or HH_ASSISTANT not in rejected:
            raise CompressError(f"{where}: no 'prompt' field and the dialogues have no '\\n\\nAssistant:' turn to split at")
        cut_c, cut_r = chosen.rindex(HH_ASSISTANT), rejected.rindex(HH_ASSISTANT)
        if chosen[:cut_c] != rejected[:cut_r]:
            raise CompressError(f"{where}: chosen and rejected dialogues differ before their last assistant turn")
        prompt = hh_to_messages(chosen[:cut_c])
        resp = {"chosen": chosen[cut_c + len(HH_ASSISTANT):].strip(),
                "rejected": rejected[cut_r + len(HH_ASSISTANT):].strip()}
    elif isinstance(chosen, list) and isinstance(rejected, list):
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        if n == 0:
            raise CompressError(f"{where}: no 'prompt' field and chosen/rejected share no prompt turns")
        prompt, resp = chosen[:n], {"chosen": chosen[n:], "rejected": rejected[n:]}
    else:
        raise CompressError(f"{where}: no 'prompt' field; give prompt, chosen and rejected")
    if "student_response" in rec:
        resp["generated"] = rec["student_response"]
    return prompt, resp


class _Renderer:
    def __init__(self, tokenizer, use_template: bool = True):
        self.tok = tokenizer
        self.template = use_template and bool(getattr(tokenizer, "chat_template", None))

    def prompt_text(self, prompt: Any, where: str) -> tuple[str, list[dict[str, str]] | None]:
        if not self.template:
            if not isinstance(prompt, str):
                raise CompressError(f"{where}: chat messages need a tokenizer with a chat template")
            return prompt, None
        msgs = _as_messages(prompt, "user", where, "prompt")
        return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True), msgs

    def response_text(self, prompt_msgs, ptext: str, response: Any, where: str, name: str) -> str:
        if not self.template:
            if not isinstance(response, str):
                raise CompressError(f"{where}: chat messages need a tokenizer with a chat template")
            return response + (self.tok.eos_token or "")
        full = self.tok.apply_chat_template(prompt_msgs + _as_messages(response, "assistant", where, name), tokenize=False)
        if not full.startswith(ptext):
            # templates that render the generation prompt differently from a finished turn
            base = self.tok.apply_chat_template(prompt_msgs, tokenize=False)
            if not full.startswith(base):
                raise CompressError(f"{where}: the chat template does not render the prompt as a prefix of the {name} dialogue")
            return full[len(base):]
        return full[len(ptext):]

    def ids(self, text: str, first: bool) -> list[int]:
        add = first and not self.template
        return self.tok(text, add_special_tokens=add)["input_ids"]


def _read_lines(p: Path) -> list[tuple[int, Any]]:
    if not p.is_file():
        raise CompressError(f"preference data not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CompressError(f"{p} is not UTF-8 text") from None
    out = parse_jsonl(text, p)
    if not out:
        raise CompressError(f"{p} is empty: it needs one JSON object per line with prompt, chosen and rejected")
    return out


def read_preference(path: str | os.PathLike[str], tokenizer, max_length: int = 1024,
                    max_prompt_length: int | None = None, long_prompt: str = "skip",
                    limit: int | None = None, use_template: bool = True) -> PreferenceData:
    """Read and tokenise preference pairs.

    A prompt longer than `max_prompt_length` (default: max_length − 1, i.e. no room for a response) is
    skipped and counted (`long_prompt='skip'`), refused ('error') or cut to its last tokens
    ('truncate'). Responses are cut so that prompt + response ≤ max_length (keeping their start).
    """
    if long_prompt not in LONG_PROMPT:
        raise CompressError(f"unknown long-prompt policy {long_prompt!r}: choose one of {', '.join(LONG_PROMPT)}")
    if max_length < 2:
        raise CompressError(f"max length must be at least 2, got {max_length}")
    max_prompt = min(max_prompt_length or max_length - 1, max_length - 1)
    p = Path(path)
    r = _Renderer(tokenizer, use_template)
    examples: list[PreferenceExample] = []
    skipped = 0
    for lineno, rec in _read_lines(p):
        if limit is not None and len(examples) >= limit:
            break
        where = f"{p}: line {lineno}"
        prompt, responses = split_record(rec, where)
        ptext, pmsgs = r.prompt_text(prompt, where)
        pids = r.ids(ptext, first=True)
        if not pids:
            raise CompressError(f"{where}: the prompt is empty")
        if len(pids) > max_prompt:
            if long_prompt == "error":
                raise CompressError(f"{where}: the prompt has {len(pids)} tokens, more than the maximum {max_prompt} "
                                    "(raise --max-prompt-length, or pass --long-prompt skip/truncate)")
            if long_prompt == "skip":
                skipped += 1
                continue
            pids = pids[-max_prompt:]
        room = max_length - len(pids)
        rids = {}
        for slot, resp in responses.items():
            ids = r.ids(r.response_text(pmsgs, ptext, resp, where, slot), first=False)[:room]
            if not ids:
                raise CompressError(f"{where}: the {slot} response is empty")
            rids[slot] = ids
        examples.append(PreferenceExample(len(examples), lineno, pids, rids, ptext, pmsgs))
    if not examples:
        raise CompressError(f"{p}: every one of the {skipped} prompts is longer than {max_prompt} tokens "
                            "(raise --max-length or --max-prompt-length)")
    opts = {"max_length": max_length, "max_prompt_length": max_prompt, "long_prompt": long_prompt, "limit": limit,
            "chat_template": r.template}
    return PreferenceData(examples, skipped, str(p), opts)


@dataclass
class SlotBatch:
    """A right-padded batch of prompt+response sequences for one slot."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    response_mask: torch.Tensor  # [B, T] True on response tokens
    lengths: torch.Tensor  # [B] response tokens per sequence

    @property
    def targets(self) -> torch.Tensor:
        """Response token ids in row-major order [N]: the targets of `response_logits`."""
        return self.input_ids[self.response_mask]


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> SlotBatch:
    """Right-padded rows prompt + response: ids, attention mask, response mask and response lengths."""
    seqs = [p + r for p, r in zip(prompts, responses, strict=True)]
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), t), dtype=torch.long)
    resp = torch.zeros((len(seqs), t), dtype=torch.bool)
    for i, (p, s) in enumerate(zip(prompts, seqs, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        att[i, : len(s)] = 1
        resp[i, len(p): len(s)] = True
    return SlotBatch(ids, att, resp, torch.tensor([len(r) for r in responses]))


def collate_slot(examples: list[PreferenceExample], slot: str, pad_id: int) -> SlotBatch:
    return pack([ex.prompt for ex in examples], [ex.responses[slot] for ex in examples], pad_id)


def concat_batches(batches: list[SlotBatch], pad_id: int) -> SlotBatch:
    """Stack slot batches (e.g. chosen then rejected) into one, right-padded to the longest sequence, so
    that one forward pass serves them all. Its `targets` are each batch's targets in order."""
    t = max(b.input_ids.shape[1] for b in batches)

    def pad(x: torch.Tensor, value) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, t - x.shape[1]), value=value)

    return SlotBatch(torch.cat([pad(b.input_ids, pad_id) for b in batches]),
                     torch.cat([pad(b.attention_mask, 0) for b in batches]),
                     torch.cat([pad(b.response_mask, False) for b in batches]),
                     torch.cat([b.lengths for b in batches]))
