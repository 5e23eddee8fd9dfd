"""The models of a decoding-time ensemble: each with its tokenizer view, prompt format, end tokens and context.

A prompt is plain text or a chat (a list of {role, content} messages). Each model formats it itself:

- chat prompt: the model's chat template with the generation prompt (a model without one is refused);
- plain text with `chat="auto"`: the chat template of a model that has one (as a single user turn), the
  plain text (with the tokenizer's BOS, if it adds one) for a model that has none;
- plain text with `chat=True`: the chat template of every model (a model without one is refused);
- plain text with `chat=False`: the plain text for every model (lm-eval's default, few-shot prompts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from compress.errors import CompressError
from compress.fuse.tokens import TokenizerView

Prompt = str | list[dict[str, str]]
ChatMode = Literal["auto", True, False]


@dataclass
class Source:
    model: torch.nn.Module
    view: TokenizerView
    name: str
    eos_ids: set[int] = field(default_factory=set)
    eos_id: int | None = None  # the end token appended when scoring a candidate that ends the answer
    context: int | None = None  # most positions the model takes

    @property
    def tokenizer(self):
        return self.view.tokenizer

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def end_ids(model: torch.nn.Module, tokenizer: Any) -> tuple[set[int], int | None]:
    """The ids that end an answer (generation config's eos ids and the tokenizer's eos), and the main one."""
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    for src in (getattr(gen, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if src is None:
            continue
        ids.extend([src] if isinstance(src, int) else list(src))
    main = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else (ids[0] if ids else None)
    return {int(i) for i in ids}, main


def make_source(model: torch.nn.Module, tokenizer: Any, name: str) -> Source:
    if tokenizer is None:
        raise CompressError(f"{name}: no tokenizer")
    view = TokenizerView(tokenizer, name)
    eos, main = end_ids(model, tokenizer)
    ctx = getattr(model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config,
                  "max_position_embeddings", None)
    return Source(model=model, view=view, name=name, eos_ids=eos, eos_id=main, context=ctx)


def render_prompt(src: Source, prompt: Prompt, chat: ChatMode = "auto") -> list[int]:
    """Token ids of `prompt` formatted for `src` (see the module doc)."""
    tok = src.tokenizer
    if isinstance(prompt, list):
        messages = prompt
    elif chat is True or (chat == "auto" and src.has_chat_template):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = None
    if messages is not None:
        if not src.has_chat_template:
            raise CompressError(f"{src.name} has no chat template: chat prompts need one "
                                f"(give plain-text prompts, or a model with a template)")
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False).input_ids
    else:
        ids = tok(prompt).input_ids
    if not ids:
        raise CompressError(f"{src.name}: the prompt is empty")
    if src.context is not None and len(ids) >= src.context:
        raise CompressError(f"the prompt is {len(ids)} tokens for {src.name}, longer than its context of "
                            f"{src.context} tokens")
    return list(ids)
