"""Options of `compress fuse data` as one pydantic model (click options, `--config`, the fingerprint).

Torch-free: the command line builds its options from it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compress.fuse.select import PAIR_MODES, TIE_RULES

VERIFIER_NAMES = ("none", "gsm8k", "choice", "closest")


class DataConfig(BaseModel):
    """How `compress fuse data` samples, scores and selects (recorded in the output's compress.json)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    target: str | None = Field(None, description="The target model: its samples give WRPO's y_wt and y_l "
                               "(no WRPO triples without it).")
    sources: list[str] = Field(default_factory=list, json_schema_extra={"cli": False},
                               description="Source models (--source, repeatable).")
    plain: list[str] = Field(default_factory=list, json_schema_extra={"cli": False},
                             description="Models (folder names or paths) whose prompts are rendered plain with "
                             "--plain-format instead of their chat template (--plain, repeatable).")
    plain_format: str = Field("{prompt}", description="Plain rendering of a prompt for the --plain models: a format "
                              "with {prompt} (e.g. few-shot examples before it); tokenised with the model's own BOS.")
    stop: list[str] = Field(default_factory=list, json_schema_extra={"cli": False},
                            description="Strings that end a response (--stop, repeatable; cut there).")
    n: int = Field(4, ge=1, description="Samples per prompt per model.")
    temperature: float = Field(0.8, ge=0, description="Sampling temperature (FuseChat-3.0 / WRPO: 0.8).")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling (FuseChat-3.0 / WRPO: 0.95; no top-k).")
    max_new_tokens: int = Field(256, ge=1, description="Longest response in each model's own tokens.")
    max_prompt_length: int = Field(1024, ge=1, description="Longest rendered prompt in any model's tokens: a longer "
                                   "prompt is an error, before anything is sampled.")
    batch_size: int = Field(8, ge=1, description="Sequences per generate call.")
    verifier: Literal[VERIFIER_NAMES] = Field("none", description="Right/wrong against each record's 'reference': "  # type: ignore[valid-type]
                                               "gsm8k (number after ####), choice (option label) or closest (the option closest to the answer in words).")
    reward_model: str | None = Field(None, description="A sequence-classification reward-model folder.")
    reward_label: int | None = Field(None, ge=0, description="Output of a multi-output reward model that is the reward.")
    implicit_reward: str | None = Field(None, description="DPO model whose implicit reward log π_dpo − log π_ref "
                                        "scores responses (with --implicit-ref).")
    implicit_ref: str | None = Field(None, description="The reference model of --implicit-reward.")
    margin_min: float = Field(0.0, description="Same-source DPO pairs: smallest reward margin kept, in the reward's own "
                              "units (FuseChat-3.0's 0.01 is in ArmoRM units).")
    margin_max: float | None = Field(None, description="Largest reward margin kept (default: no upper bound; "
                                     "FuseChat-3.0's 0.1 is in ArmoRM units).")
    tie: Literal[TIE_RULES] = Field("random", description="Equal scores: random (seeded per prompt), first (model "  # type: ignore[valid-type]
                                    "order, then sample order) or shortest.")
    pairs: Literal[PAIR_MODES] = Field("one", description="DPO pairs per prompt: one (the source whose chosen "  # type: ignore[valid-type]
                                       "ranks highest) or all (one per source).")
    shard_size: int = Field(16, ge=1, description="Prompts per shard (a crash loses at most the shard in progress).")
    offset: int = Field(0, ge=0, description="Skip the first N prompts of the file.")
    limit: int | None = Field(None, ge=1, description="Use only N prompts (after --offset).")
    seed: int = Field(42, description="Seed of sampling and of the random tie rule.")

    @model_validator(mode="after")
    def _consistent(self):
        if self.implicit_reward and not self.implicit_ref:
            raise ValueError("--implicit-reward needs --implicit-ref (its DPO reference)")
        if self.implicit_ref and not self.implicit_reward:
            raise ValueError("--implicit-ref needs --implicit-reward")
        if self.reward_model and self.implicit_reward:
            raise ValueError("give one reward: --reward-model or --implicit-reward")
        if self.margin_max is not None and self.margin_max < self.margin_min:
            raise ValueError(f"--margin-max {self.margin_max} is below --margin-min {self.margin_min}")
        return self

    def sampling_options(self) -> dict:
        """What the samples and scores of a shard depend on (a resumed build must match them)."""
        keep = ("plain", "plain_format", "stop", "n", "temperature", "top_p", "max_new_tokens", "max_prompt_length",
                "batch_size", "verifier", "reward_label", "shard_size", "offset", "limit", "seed")
        return {k: getattr(self, k) for k in keep}
