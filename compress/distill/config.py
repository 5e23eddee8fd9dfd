"""The options of `compress distill` as pydantic models: one description generates the click options,
validates `--config run.yaml`, and is recorded in the output's compress.json.

Torch-free (the command line imports it to build its options). Choices come from
`compress.distill.registry`; every float must be finite.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from compress.data.preference import LONG_PROMPT
from compress.distill.registry import (
    ADVANTAGE_CLIPS,
    ALPHA_SCHEDULES,
    DPO_LOSS_TYPES,
    KD_DIRECTIONS,
    METHODS,
    MISSING_MASS,
    SCHEDULERS,
    default_beta,
)
from compress.errors import CompressError

MethodName = Literal[tuple(METHODS)]  # type: ignore[valid-type]
DEVICE_HELP = "cpu, cuda, cuda:N or auto (cuda when a GPU is available)."


def _canonical_dtype(value: Any, allowed: tuple[str, ...]) -> str:
    from compress.model.device import canonical_dtype_name

    key = canonical_dtype_name(value) if isinstance(value, str) else None
    if key not in allowed:
        raise ValueError(f"must be one of {', '.join(allowed)} (or float32, bfloat16, float16), got {value!r}")
    return key


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)


class DataShape(_Options):
    """How preference pairs are tokenised and cut: part of every data fingerprint."""

    max_length: int = Field(1024, ge=2, description="Prompt + response tokens; responses are cut to fit.")
    max_prompt_length: int | None = Field(None, ge=1, description="Longest prompt in tokens (default: --max-length - 1).")
    long_prompt: Literal[LONG_PROMPT] = Field(  # type: ignore[valid-type]
        "skip", description="A prompt longer than --max-prompt-length: skip it (counted), stop with an error, "
        "or keep its last tokens.")
    limit: int | None = Field(None, ge=1, description="Use only the first N pairs.")


class DistillConfig(DataShape):
    """Every setting that shapes a training run's result (recorded in compress.json, checked on --resume)."""

    method: MethodName = Field(..., description="The loss: " + "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()) + ".")
    # loss settings
    k: int = Field(50, ge=0, description="Teacher top-k kept per token (online teacher; a cache has its own k). "
                   "0: the teacher's full distribution (exact KL, as TRL's GKD; kd and dckd).")
    kd_direction: Literal[KD_DIRECTIONS] = Field("forward", description="KD divergence: forward KL(teacher‖student), "  # type: ignore[valid-type]
                                                 "reverse KL, or TRL GKD's generalised JSD (--jsd-beta).")
    jsd_beta: float = Field(0.5, ge=0, le=1, description="Generalised JSD mixture weight (TRL GKD beta): 0 is forward "
                            "KL, 1 reverse KL.")
    missing_mass: Literal[MISSING_MASS] = Field(  # type: ignore[valid-type]
        "rest", description="The teacher mass outside its top-k: rest (one extra bucket, ADPA/DCKD), zero "
        "(renormalise over the top-k, DistillKit), topk_soft_ce (soft CE on the top-k, FuseLLM).")
    kd_temperature: float = Field(1.0, gt=0, description="KD temperature T: student logits / T, teacher re-targeted to "
                                  "T, and the divergence times T² (Hinton et al.).")
    w_sft: float = Field(1.0, ge=0, description="Weight of the CE on chosen responses (kd, dckd, adpa).")
    w_distill: float = Field(1.0, ge=0, description="Weight of the distillation term (kd, dckd).")
    w_chosen: float = Field(0.1, ge=0, description="DCKD weight of the KL on chosen responses (the released recipe: 0.1).")
    w_rejected: float = Field(0.1, ge=0, description="DCKD weight of the KL on rejected responses (the released recipe: 0.1).")
    w_adpa: float = Field(1.6, ge=0, description="ADPA weight of the expected advantage (the released recipe: 1.6).")
    advantage_clip: Literal[ADVANTAGE_CLIPS] = Field(  # type: ignore[valid-type]
        "none", description="none: the signed advantage (the paper); unit: the released code's clamp to [0, 1].")
    beta: float | None = Field(None, gt=0, description="DPO beta. Default: dpo 0.01 (the ADPA and WRPO recipes, on summed "
                               "log-probs; TRL's default is 0.1), ln-dpo 10 (FuseChat-3.0, per-token means), "
                               "0.1 with --dpo-loss-type hinge or ipo (TRL's default).")
    alpha: float = Field(0.1, ge=0, le=1, description="WRPO: the largest weight α of the source response y_ws (the paper's 0.1).")
    alpha_schedule: Literal[ALPHA_SCHEDULES] = Field(  # type: ignore[valid-type]
        "linear", description="WRPO: linear (α = --alpha · step / steps, the official dynamic schedule) or constant.")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Conservative DPO: the label-noise rate ε of the sigmoid loss.")
    dpo_loss_type: Literal[DPO_LOSS_TYPES] = Field(  # type: ignore[valid-type]
        "sigmoid", description="DPO loss as TRL names it: sigmoid, hinge, or ipo (on length-normalised log-ratios, as TRL).")
    # optimisation
    lr: float = Field(1e-5, gt=0, description="Peak learning rate (AdamW). The papers' recipes use 5e-7 (dckd, adpa) and "
                      "3e-7 to 1e-6 (dpo) at an effective batch of 64-128 pairs.")
    epochs: int = Field(1, ge=1, description="Passes over the training pairs.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps (overrides --epochs).")
    batch_size: int = Field(2, ge=1, description="Pairs per micro-batch (per process).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="Fraction of the steps with a linear warm-up.")
    scheduler: Literal[SCHEDULERS] = Field("cosine", description="Learning-rate schedule after the warm-up.")  # type: ignore[valid-type]
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0: off).")
    precision: str = Field("fp32", description="fp32, or bf16 mixed precision (fp32 master weights); float32 / bfloat16 "
                           "are accepted too.", json_schema_extra={"cli": False})
    seed: int = Field(42, description="Random seed: data order, initialisation of anything random.")
    eval_pairs: int = Field(0, ge=0, description="Hold out the last N pairs for evaluation.")
    # memory and side work (do not change the result)
    activation_checkpointing: bool = Field(False, description="Recompute each layer's activations in the backward pass "
                                           "instead of keeping them: about 1/3 more compute, activation memory of one "
                                           "layer (TRL's default).")
    eval_every: int = Field(0, ge=0, description="Evaluate every N steps (and at the end).")
    save_every: int = Field(0, ge=0, description="Write a step checkpoint every N steps (for --resume).")
    keep_checkpoints: int = Field(2, ge=0, description="Step checkpoints kept (the latest ones; 0: all).")

    @field_validator("precision", mode="before")
    @classmethod
    def _precision(cls, v: Any) -> str:
        return _canonical_dtype(v, ("fp32", "bf16"))

    @property
    def dpo_beta(self) -> float:
        return self.beta if self.beta is not None else default_beta(self.method, self.dpo_loss_type)

    def result_options(self) -> dict[str, Any]:
        """The settings that change the trained weights (all but the side work)."""
        return self.model_dump(exclude={"eval_every", "save_every", "keep_checkpoints", "activation_checkpointing"})


class TrainRun(DistillConfig):
    """A whole `distill train` run: the training settings plus its inputs, output and places."""

    data: str = Field(..., description="Preference jsonl: prompt/chosen/rejected (strings or chat messages), or HH-RLHF "
                      "dialogues.")
    output: str = Field(..., description="Output folder (written atomically).", json_schema_extra={"cli": False})
    teacher: str | None = Field(None, description="Teacher model run online (the DPO-aligned teacher for dckd/adpa).")
    ref_teacher: str | None = Field(None, description="ADPA reference teacher (the DPO teacher's SFT starting point).")
    teacher_cache: str | None = Field(None, description="Cache folder from `distill cache-teacher` (no teacher in memory).")
    ref_model: str | None = Field(None, description="DPO reference model (default: the initial student).")
    checkpoint_dir: str | None = Field(None, description="Folder of step checkpoints (default: OUTPUT.checkpoints).")
    device: str = Field("cpu", description=DEVICE_HELP)

    def settings(self) -> DistillConfig:
        return DistillConfig.model_validate(self.model_dump(include=set(DistillConfig.model_fields)))


class CacheTeacherRun(DataShape):
    """`distill cache-teacher`: score responses with the teacher once, store its top-k."""

    data: str = Field(..., description="Preference jsonl (as for `distill train`).")
    output: str | None = Field(None, description="Cache folder (default: beside the data).", json_schema_extra={"cli": False})
    ref_teacher: str | None = Field(None, description="Also store this model's log-probs at the teacher's top-k ids "
                                    "(the ADPA reference).")
    slots: str = Field("chosen,rejected", description="Responses to score: chosen, rejected, generated (comma list).")
    k: int = Field(50, ge=1, description="Teacher top-k kept per token.")
    batch_size: int = Field(4, ge=1, description="Sequences per teacher forward.")
    dtype: str = Field("fp32", description="Teacher compute dtype.", json_schema_extra={"cli": False})
    device: str = Field("cpu", description=DEVICE_HELP)

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype(cls, v: Any) -> str:
        return _canonical_dtype(v, ("fp32", "bf16", "fp16"))


class GenerateRun(DataShape):
    """`distill generate`: the student's own response to every prompt (ADPA's generations)."""

    data: str = Field(..., description="Preference jsonl (as for `distill train`).")
    output: str = Field(..., description="Output jsonl (written atomically).", json_schema_extra={"cli": False})
    max_new_tokens: int = Field(256, ge=1, description="Longest response in tokens.")
    batch_size: int = Field(8, ge=1, description="Prompts per generation batch.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature; 0 is greedy (the ADPA recipe).")
    dtype: str = Field("auto", description="Compute dtype.", json_schema_extra={"cli": False})
    device: str = Field("cpu", description=DEVICE_HELP)
    seed: int = Field(42, description="Random seed (sampling).")

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype(cls, v: Any) -> str:
        return _canonical_dtype(v, ("auto", "fp32", "bf16", "fp16"))


def validated(model: type[BaseModel], values: dict[str, Any]) -> Any:
    """`model` built from `values` (Python API use); an invalid value is one CompressError naming it."""
    try:
        return model.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "options"
        raise CompressError(f"invalid distill option {where!r}: {err['msg']}") from None
