"""Fusion data: records of a jsonl or text file, rendered by one model, with the byte span of every token.

Every model of a fusion run reads the same records, renders them its own way and tokenises them its
own way; what the models share is the *content* text of each record (the response of a chat record,
the whole text of a text record). Token alignment works on byte offsets into that content.

Records (one per line of a `.jsonl`, or per non-blank line of a text file):
- text: `{"text": ...}` or a line of a `.txt`/`.raw` file. The model sees its BOS (if its tokenizer
  adds one) and the text; every text token after the first position is predicted;
- chat: `{"messages": [...]}` (the last assistant message is the response, the turns before it the
  prompt), `{"prompt", "response"|"completion"|"output"|"chosen"}`, `{"question", "answer"}` (GSM8K),
  `{"instruction", "input"?, "output"}` (Alpaca). Only the response is predicted.

Chat records are rendered with the model's own chat template. A model without one (Gemma-3-270M is a
base model: its GGUF carries no template) gets `PLAIN_TEMPLATE`, a plain-text rendering ("User: ...",
"Assistant: ...", the response followed by the tokenizer's EOS); which one was used is recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.errors import CompressError

PLAIN_TEMPLATE = (  # newlines as expressions: chat templates are rendered with trim_blocks
    "{% for m in messages %}{% if not loop.first %}{{ '\\n\\n' }}{% endif %}"
    "{{ 'User' if m['role'] == 'user' else ('Assistant' if m['role'] == 'assistant' else 'System') }}: "
    "{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}{{ '\\n\\nAssistant: ' }}{% endif %}"
)
PLAIN_NAME = "plain (compress: 'User: ...\\n\\nAssistant: ...' + EOS)"
TEXT_SUFFIXES = (".txt", ".raw", ".tokens", ".text")
RESPONSE_KEYS = ("response", "completion", "output", "chosen")


@dataclass
class Record:
    """One record as read: a text, or a chat prompt (messages) and the response text."""

    line: int
    digest: int  # signed 63-bit hash of the record as read (detects other data or order)
    text: str | None = None
    prompt: list[dict[str, str]] | None = None
    response: str | None = None

    @property
    def content(self) -> str:
        return self.text if self.text is not None else self.response  # type: ignore[return-value]


@dataclass
class Rendered:
    """A record tokenised by one model: prompt ids, label ids (predicted), their byte spans in the content."""

    prompt: list[int]
    labels: list[int]
    starts: list[int]  # byte start of each label in the content, -1 outside it (template text, special tokens)
    ends: list[int]
    content_bytes: int
    content_digest: int  # hash of the content text as this model rendered it


def _digest(obj: Any) -> int:
    h = hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                       and isinstance(m.get("content"), str) for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise CompressError(f"{where}: the prompt must be a string or a list of {{role, content}} messages")


def _text_of(value: Any, where: str, name: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and isinstance(value[-1].get("content"), str):
        return value[-1]["content"]  # an assistant message list: its last message
    raise CompressError(f"{where}: {name!r} must be a string (or assistant messages)")


def parse_record(rec: Any, line: int, where: str) -> Record:
    """A `Record` from one JSON object (see the module docstring for the shapes)."""
    if isinstance(rec, str):
        return Record(line, _digest(rec), text=rec)
    if not isinstance(rec, dict):
        raise CompressError(f"{where}: expected a JSON object (text, messages, prompt/response, question/answer)")
    d = _digest(rec)
    if "messages" in rec or "conversations" in rec:
        msgs = _messages(rec.get("messages", rec.get("conversations")), where)
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=-1)
        if last < 1:
            raise CompressError(f"{where}: the messages have no assistant turn after a prompt turn")
        return Record(line, d, prompt=msgs[:last], response=msgs[last]["content"])
    if "question" in rec and "answer" in rec:
        return Record(line, d, prompt=_messages(rec["question"], where), response=_text_of(rec["answer"], where, "answer"))
    if "instruction" in rec and "output" in rec:
        inst = rec["instruction"] + (f"\n\n{rec['input']}" if rec.get("input") else "")
        return Record(line, d, prompt=_messages(inst, where), response=_text_of(rec["output"], where, "output"))
    if "prompt" in rec:
        key = next((k for k in RESPONSE_KEYS if k in rec), None)
        if key is None:
            raise CompressError(f"{where}: a prompt needs a response ({', '.join(RESPONSE_KEYS)})")
        return Record(line, d, prompt=_messages(rec["prompt"], where), response=_text_of(rec[key], where, key))
    if "text" in rec:
        if not isinstance(rec["text"], str):
            raise CompressError(f"{where}: 'text' must be a string")
        return Record(line, d, text=rec["text"])
    raise CompressError(f"{where}: no text, messages, prompt/response, question/answer or instruction/output "
                        f"(it has {', '.join(map(str, rec)) or 'no fields'})")


def read_records(path: str | os.PathLike[str], limit: int | None = None) -> list[Record]:
    """Records of a `.jsonl`/`.json` file or of a text file (one per non-blank line)."""
    from compress.data.text import parse_json_list, parse_jsonl

    p = Path(path)
    if not p.is_file():
        raise CompressError(f"data not found: {path}")
    try:
        raw = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CompressError(f"{path} is not UTF-8 text") from None
    if p.suffix in (".jsonl", ".json"):
        if p.suffix == ".json":
            rows = list(enumerate(parse_json_list(raw, path), 1))
        else:
            rows = parse_jsonl(raw, p)
        recs = [parse_record(r, n, f"{path}: {'record' if p.suffix == '.json' else 'line'} {n}") for n, r in rows]
    else:
        recs = [Record(n, _digest(t), text=t) for n, t in enumerate(raw.split("\n"), 1) if t.strip()]
    if limit is not None:
        recs = recs[:limit]
    if not recs:
        raise CompressError(f"{path} holds no records")
    return recs


class Renderer:
    """Renders and tokenises records for one model (its tokenizer seen as bytes, see `tokens.TokenizerView`)."""

    def __init__(self, tokenizer: Any, name: str = "model"):
        from compress.fuse.tokens import TokenizerView

        self.tok = tokenizer
        self.view = TokenizerView(tokenizer, name)
        self.name = name
        own = getattr(tokenizer, "chat_template", None)
        self.template = own if isinstance(own, str) and own else PLAIN_TEMPLATE
        self.template_name = "own" if self.template is own else PLAIN_NAME
        self.adds_bos = bool(tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [tokenizer.bos_token_id]
                             and tokenizer.bos_token_id is not None)

    def describe(self) -> dict[str, Any]:
        return {"chat_template": self.template, "chat_template_source": self.template_name,
                "adds_bos": self.adds_bos, "tokenizer_kind": self.view.kind}

    def _spans(self, text: str, ids: list[int], offsets: list[tuple[int, int]], c0: int, c1: int
               ) -> tuple[list[int], list[int]]:
        """Byte span of each token relative to the content at char [c0, c1) of `text`; -1 outside it.

        Ordinary tokens advance by their exact bytes (a character split over byte tokens gets one part
        each); special tokens (no bytes) skip the characters their offsets cover."""
        char_byte = [0]
        for ch in text:
            char_byte.append(char_byte[-1] + len(ch.encode("utf-8", "surrogatepass")))
        b0, b1 = char_byte[c0], char_byte[c1]
        pos, starts, ends = 0, [], []
        for tid, (_, ce) in zip(ids, offsets, strict=True):
            nb = len(self.view.token_bytes(tid))
            if nb == 0:
                pos = max(pos, char_byte[ce])
                starts.append(-1)
                ends.append(-1)
                continue
            s, e = pos, pos + nb
            pos = e
            s2, e2 = max(s, b0), min(e, b1)
            if s2 >= e2:
                starts.append(-1)
                ends.append(-1)
            else:
                starts.append(s2 - b0)
                ends.append(e2 - b0)
        if pos != char_byte[-1]:
            raise CompressError(f"{self.name}: its tokens do not reproduce the text's bytes ({pos} of {char_byte[-1]})")
        return starts, ends

    def _encode(self, text: str, special: bool) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.tok(text, add_special_tokens=special, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def render(self, rec: Record) -> Rendered:
        """Prompt ids and labels of `rec` for this model, with the labels' byte spans in the content."""
        content = rec.content
        if rec.text is not None:
            ids, offs = self._encode(content, special=True)
            n_lead = 0
            while n_lead < len(ids) and offs[n_lead] == (0, 0) and len(self.view.token_bytes(ids[n_lead])) == 0:
                n_lead += 1
            n_prompt = max(n_lead, 1)  # no BOS: the first text token is context only
            starts, ends = self._spans(content, ids, offs, 0, len(content))
            return Rendered(ids[:n_prompt], ids[n_prompt:], starts[n_prompt:], ends[n_prompt:],
                            len(content.encode("utf-8")), _digest(content))
        prompt_text = self.tok.apply_chat_template(rec.prompt, chat_template=self.template, tokenize=False,
                                                   add_generation_prompt=True)
        full = self.tok.apply_chat_template(rec.prompt + [{"role": "assistant", "content": content}],
                                            chat_template=self.template, tokenize=False)
        if not full.startswith(prompt_text):
            base = self.tok.apply_chat_template(rec.prompt, chat_template=self.template, tokenize=False)
            if not full.startswith(base):
                raise CompressError(f"{self.name}: its chat template does not render the prompt as a prefix of the dialogue")
            prompt_text = base
        response = full[len(prompt_text):]
        if self.template is PLAIN_TEMPLATE:
            response += self.tok.eos_token or ""
        at = response.find(content)
        if at < 0:  # a template that trims the content
            content = content.strip()
            at = response.find(content)
            if at < 0:
                raise CompressError(f"{self.name}: its chat template changes the response text; it cannot be aligned")
        pids, _ = self._encode(prompt_text, special=self.template is PLAIN_TEMPLATE)
        ids, offs = self._encode(response, special=False)
        starts, ends = self._spans(response, ids, offs, at, at + len(content))
        return Rendered(pids, ids, starts, ends, len(content.encode("utf-8")), _digest(content))
