"""How a prompt becomes token ids for one model: its chat template, or an explicit plain rendering.

A prompt is a string (one user turn) or a list of chat messages ({role, content}). Two renderings:

- `chat`: the model's own chat template with the generation prompt. A model without a template is
  refused (a base model such as Gemma-3-270M has none; nothing is guessed for it).
- `plain`: `plain_format.format(prompt=TEXT)` tokenised with the tokenizer's own special tokens (its
  BOS, where it adds one). Only string prompts and single-user-turn chats can be rendered plain. A
  response rendered after a plain prompt ends with the tokenizer's EOS, as in `compress distill`'s
  preference reader for tokenizers without a chat template.

Both renderings give the prompt ids and, for scoring, the ids of a response continuing them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from compress.errors import CompressError

Prompt = str | list[dict[str, str]]
Mode = Literal["chat", "plain"]
RENDER_MODES: tuple[str, ...] = ("chat", "plain")


def as_messages(prompt: Any, where: str = "prompt") -> list[dict[str, str]]:
    """A prompt as chat messages: a string is one user turn; a message list is checked and copied."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and prompt and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt):
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    raise CompressError(f"{where}: a prompt must be a string or a non-empty list of {{role, content}} messages")


def prompt_text(prompt: Any, where: str = "prompt") -> str:
    """The text of a prompt for a plain rendering: the string, or the content of a single user turn."""
    if isinstance(prompt, str):
        return prompt
    msgs = as_messages(prompt, where)
    if len(msgs) == 1 and msgs[0]["role"] == "user":
        return msgs[0]["content"]
    raise CompressError(f"{where}: a multi-turn chat prompt cannot be rendered plain (it needs a chat template)")


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


@dataclass(frozen=True)
class Rendering:
    """The prompt format of one model: `mode` chat or plain (with `plain_format`, which holds `{prompt}`)."""

    tokenizer: Any
    name: str
    mode: Mode = "chat"
    plain_format: str = "{prompt}"

    def check(self) -> None:
        if self.mode == "chat" and not has_chat_template(self.tokenizer):
            raise CompressError(f"{self.name} has no chat template, so chat prompts cannot be rendered for it: "
                                "render its prompts plain (--plain NAME with --plain-format), or give a model with a template")
        if self.mode == "plain":
            if "{prompt}" not in self.plain_format:
                raise CompressError(f"--plain-format {self.plain_format!r} has no {{prompt}} field")
            try:
                self.plain_format.format(prompt="")
            except (KeyError, IndexError, ValueError) as e:
                raise CompressError(f"--plain-format {self.plain_format!r} is not a format with only {{prompt}}: {e}") from None

    def prompt_ids(self, prompt: Any, where: str = "prompt") -> list[int]:
        """Token ids of `prompt` ready for generation (generation prompt included in chat mode)."""
        tok = self.tokenizer
        if self.mode == "chat":
            text = tok.apply_chat_template(as_messages(prompt, where), tokenize=False, add_generation_prompt=True)
            ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tok(self.plain_format.format(prompt=prompt_text(prompt, where)))["input_ids"]
        if not ids:
            raise CompressError(f"{where}: the prompt is empty")
        return list(ids)

    def response_ids(self, prompt: Any, response: str, where: str = "prompt") -> list[int]:
        """Token ids of `response` as the assistant turn after `prompt` (end-of-turn / EOS included)."""
        tok = self.tokenizer
        if self.mode == "plain":
            return list(tok(response + (tok.eos_token or ""), add_special_tokens=False)["input_ids"])
        msgs = as_messages(prompt, where)
        head = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": response}], tokenize=False)
        if not full.startswith(head):
            base = tok.apply_chat_template(msgs, tokenize=False)
            if not full.startswith(base):
                raise CompressError(f"{where}: {self.name}'s chat template does not render the prompt as a prefix of the dialogue")
            head = base
        return list(tok(full[len(head):], add_special_tokens=False)["input_ids"])
