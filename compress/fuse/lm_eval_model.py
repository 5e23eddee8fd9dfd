"""The Cool-Fusion decoder as an lm-eval model: generation tasks (GSM8K ...) answered by the fused models.

`FusedLM.generate_until` decodes each request with `CoolFusionDecoder.generate` (greedy, lm-eval's
`until` strings as stops, `max_gen_toks` as the budget in each model's own tokens) and returns the
fused answer, or the "+R" answer when `rerank`. Log-likelihood requests are refused: the fused models
share no vocabulary over which one distribution could be scored.

Chat templates: lm-eval renders a chat history into one string with the model's template, but every
model of the ensemble has its own; `apply_chat_template` therefore returns the history itself
(JSON behind a marker) and each model applies its own template when the request is decoded.
"""

from __future__ import annotations

import json
from typing import Any

from lm_eval.api.model import LM

from compress.errors import CompressError
from compress.fuse.cool_fusion import CoolFusionDecoder
from compress.fuse.sources import Prompt

CHAT_MARK = "\x00compress-chat\x00"


def parse_context(context: str) -> Prompt:
    """A request's context: plain text, or chat messages passed through `FusedLM.apply_chat_template`."""
    if context.startswith(CHAT_MARK):
        return json.loads(context[len(CHAT_MARK):])
    return context


class FusedLM(LM):
    def __init__(self, decoder: CoolFusionDecoder, rerank: bool = False, max_gen_toks: int = 256, progress=None):
        super().__init__()
        self.decoder, self.rerank, self.max_gen_toks = decoder, rerank, max_gen_toks
        self.decoder.rerank = rerank
        self.progress = progress
        self.records: list[dict[str, Any]] = []  # per request: wins, agreed, segments, time, +R choice

    @property
    def name(self) -> str:
        return ("cool-fusion+r" if self.rerank else "cool-fusion") + "(" + "+".join(
            s.name for s in self.decoder.sources) + ")"

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise CompressError(f"{self.name} answers generation tasks only (e.g. gsm8k); this task scores "
                            f"log-likelihoods of choices: evaluate it with the single models")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        self.loglikelihood(requests)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out: list[str] = []
        for req in requests:
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            budget = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            r = self.decoder.generate(parse_context(context), stop=until, max_new_tokens=budget)
            text = r["rerank"]["text"] if self.rerank and "rerank" in r else r["text"]
            self.records.append({"wins": r["wins"], "backed": r["backed"], "agreed": r["agreed"],
                                 "segments": len(r["segments"]), "tokens": r["tokens"], "time": r["time"],
                                 **({"rerank_chosen": r["rerank"]["chosen"]} if "rerank" in r else {})})
            out.append(text)
            if self.progress:
                self.progress(1)
        return out

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return CHAT_MARK + json.dumps(chat_history, ensure_ascii=False)

    @property
    def tokenizer_name(self) -> str:
        return self.name

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return "each model's own chat template"


FUSIONS = ("cool-fusion", "cool-fusion+r")


def parse_ensemble(spec: str) -> list[str]:
    """'M1,M2[,M3]' -> the member folders (at least one)."""
    members = [m.strip() for m in spec.split(",") if m.strip()]
    if not members:
        raise CompressError(f"--ensemble {spec!r}: give the member models as M1,M2[,M3]")
    return members


def check_generation_tasks(tasks: list[str], configs: dict[str, dict[str, Any]]) -> None:
    """An ensemble is scored on generation tasks only: refuse the others before any model loads."""
    bad = [t for t in tasks if configs.get(t, {}).get("output_type") != "generate_until"]
    if bad:
        raise CompressError(f"--ensemble answers generation tasks only (e.g. gsm8k): {', '.join(bad)} "
                            f"score log-likelihoods or perplexity; evaluate them with the single models")
