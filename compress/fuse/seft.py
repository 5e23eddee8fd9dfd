"""SEFT (self-evolution fine-tuning, Findings of EMNLP 2024): a reviser, then SFT on its revisions.

1. Reviser pairs from scored samples (the `samples.jsonl` of `compress fuse data`): per prompt, a weak
   response y_l is mapped to a strong one y_h of the same prompt (revise), and a strong response to
   itself (keep: good responses stay unchanged, the "adaptive" reviser). Strong = passes the verifier
   and ranks highest; weak = fails (with a verifier) or ranks lowest with a lower score (reward only).
   The reviser (by default a copy of the policy) is trained by SFT: L_rev = −log R(y_h | x, y).
2. Each round: the policy samples responses to the prompts, the reviser rewrites each one greedily,
   and the policy is fine-tuned (SFT) on (x, R(x, y)): L = −log π_θ(R(x, y) | x).
3. With a verifier and references, each round reports the reviser's fix rate (wrong sample -> right
   revision) and keep rate (right sample -> right revision).

The reviser reads one user turn: `reviser_format` with {prompt} and {draft}. Every step writes its
result once whole into the work folder (OUTPUT.seft/), so a rerun continues after the last finished
step; a rerun with other options is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from compress.errors import CompressError

REVISER_FORMAT = ("{prompt}\n\nA draft answer:\n{draft}\n\nIf the draft answer is right, repeat it unchanged. "
                  "If it is wrong, write the right answer instead.")
STATE = "seft.json"


class SeftConfig(BaseModel):
    """Options of `compress distill seft` (recorded in the output's compress.json)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    reviser_base: str | None = Field(None, description="Model the reviser is trained from (default: the policy).")
    rounds: int = Field(1, ge=1, description="Rounds of sample -> revise -> SFT.")
    n: int = Field(1, ge=1, description="Policy samples per prompt per round.")
    temperature: float = Field(0.8, ge=0, description="Policy sampling temperature (0: greedy, with --n 1).")
    top_p: float = Field(0.95, gt=0, le=1, description="Policy nucleus sampling.")
    max_new_tokens: int = Field(256, ge=1, description="Longest policy sample and revision.")
    stop: list[str] = Field(default_factory=list, json_schema_extra={"cli": False},
                            description="Strings that end a sample or a revision (--stop, repeatable).")
    verifier: Literal["none", "gsm8k", "choice", "closest"] = Field("none", description="none, gsm8k, choice or closest: scores samples and revisions for the fix and keep rates.")
    reviser_format: str = Field(REVISER_FORMAT, description="The reviser's user turn, with {prompt} and {draft}.")
    keep_pairs: bool = Field(True, description="Also train the reviser on strong -> itself (the adaptive reviser).")
    lr: float = Field(1e-5, gt=0, description="Learning rate of both SFT stages.")
    epochs: int = Field(1, ge=1, description="Epochs of both SFT stages.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps of each SFT stage (overrides --epochs).")
    batch_size: int = Field(4, ge=1, description="Examples per micro-batch (training) and sequences per generate call.")
    max_length: int = Field(1024, ge=2, description="Prompt + response tokens in training.")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="Training precision: fp32 or bf16.")
    seed: int = Field(42, description="Seed of sampling, tie rules and training.")


def _text(prompt: Any) -> str:
    from compress.fuse.render import prompt_text

    return prompt_text(prompt)


def reviser_records(samples: list[dict[str, Any]], fmt: str, keep_pairs: bool = True, seed: int = 42
                    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Reviser SFT records from scored samples: weak -> strong and (optionally) strong -> itself per prompt."""
    from compress.fuse.select import Response, Rules, pick

    rules = Rules(tie="random", seed=seed)
    out, counts = [], {"revise": 0, "keep": 0, "no_strong": 0, "no_weak": 0}
    for rec in samples:
        resps = [Response(m, k, order, s["text"], s["score"]) for order, (m, ss) in enumerate(rec["samples"].items())
                 for k, s in enumerate(ss)]
        if not resps or not resps[0].score:
            raise CompressError("the samples carry no scores: build them with a --verifier or a reward model")
        verified = "verifier" in resps[0].score
        strong_pool = [r for r in resps if r.passes]
        if not strong_pool:
            counts["no_strong"] += 1
            continue
        strong, _ = pick(strong_pool, rules, f"{rec['index']}/strong")
        weak_pool = [r for r in resps if not r.passes] if verified else [r for r in resps if r.key() < strong.key()]
        text = _text(rec["prompt"])
        if weak_pool:
            weak, _ = pick(weak_pool, rules, f"{rec['index']}/weak", worst=True)
            out.append({"prompt": fmt.format(prompt=text, draft=weak.text), "chosen": strong.text, "kind": "revise"})
            counts["revise"] += 1
        else:
            counts["no_weak"] += 1
        if keep_pairs:
            good, _ = pick(strong_pool, rules, f"{rec['index']}/keep")
            out.append({"prompt": fmt.format(prompt=text, draft=good.text), "chosen": good.text, "kind": "keep"})
            counts["keep"] += 1
    if not out:
        raise CompressError("no reviser pairs: no prompt has a strong (passing) response in the samples")
    return out, counts


def rates(sample_ok: list[float], revised_ok: list[float]) -> dict[str, float | int | None]:
    """Fix rate P(revision right | sample wrong) and keep rate P(revision right | sample right)."""
    wrong = [r for s, r in zip(sample_ok, revised_ok, strict=True) if s != 1.0]
    right = [r for s, r in zip(sample_ok, revised_ok, strict=True) if s == 1.0]
    return {"samples_right": len(right), "samples_wrong": len(wrong),
            "fix_rate": sum(wrong) / len(wrong) if wrong else None,
            "keep_rate": sum(right) / len(right) if right else None,
            "sample_acc": len(right) / len(sample_ok) if sample_ok else None,
            "revision_acc": sum(revised_ok) / len(revised_ok) if revised_ok else None}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    from compress.checkpoint.atomic import replace_file

    replace_file(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _generate(model_path: str, prompts: list[Any], cfg: SeftConfig, n: int, temperature: float, seed: int,
              device: str, dtype: str) -> list[list[str]]:
    from compress.fuse.render import Rendering
    from compress.fuse.sampling import sample
    from compress.model import load

    model, tok = load(model_path, device, dtype)
    r = Rendering(tok, Path(model_path).name, "chat")
    r.check()
    got, _ = sample(model, tok, [r.prompt_ids(p) for p in prompts], n, temperature=temperature, top_p=cfg.top_p,
                    max_new_tokens=cfg.max_new_tokens, stop=tuple(cfg.stop), batch_size=cfg.batch_size, seed=seed)
    return [[s.text for s in ss] for ss in got]


def _sft(student: str, data: Path, out: Path, cfg: SeftConfig, lr: float, device: str) -> None:
    from compress.distill.train import distill

    if (out / "compress.json").is_file():
        return  # finished in an earlier run
    distill(student, data, out, "sft", device=device, lr=lr, epochs=cfg.epochs, max_steps=cfg.max_steps,
            batch_size=cfg.batch_size, max_length=cfg.max_length, precision=cfg.precision, seed=cfg.seed,
            long_prompt="truncate")


def _score(verifier, prompts: list[Any], texts: list[str], refs: list[Any]) -> list[float]:
    return verifier.score(prompts, texts, refs) if verifier is not None else []


def run_seft(policy: str | os.PathLike[str], samples_path: str | os.PathLike[str], prompts_path: str | os.PathLike[str],
             output: str | os.PathLike[str], cfg: SeftConfig, *, force: bool = False, device: str = "cpu",
             dtype: str = "auto", work: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Train a reviser, then `cfg.rounds` rounds of policy SFT on its revisions; write the policy to `output`."""
    from compress.checkpoint.atomic import atomic_dir, check_checkpoint_dir, check_output, replace_file
    from compress.checkpoint.card import CARD_FILE
    from compress.checkpoint.provenance import PROVENANCE_FILE, file_sha256
    from compress.fuse.build import read_prompts
    from compress.fuse.sampling import check_sampling
    from compress.fuse.scorers import make_verifier

    check_sampling(cfg.n, cfg.temperature, cfg.top_p)
    inputs = [str(policy), str(samples_path), str(prompts_path)] + ([cfg.reviser_base] if cfg.reviser_base else [])
    check_output(output, inputs, force)
    wd = Path(work) if work else Path(str(output) + ".seft")
    check_checkpoint_dir(wd, inputs, output)
    prompts = read_prompts(prompts_path)
    verifier = make_verifier(cfg.verifier)
    if verifier is not None:
        for p in prompts:
            if p.reference is None:
                raise CompressError(f"prompt {p.id} (line {p.line}) has no reference: --verifier {cfg.verifier} needs one")
            verifier.check([p.reference])
    if not Path(samples_path).is_file():
        raise CompressError(f"samples file not found: {samples_path} (the samples.jsonl of `compress fuse data`)")
    state = {"config": cfg.model_dump(), "policy": str(Path(policy).resolve()), "samples_sha256": file_sha256(samples_path),
             "prompts_sha256": file_sha256(prompts_path)}
    if (wd / STATE).is_file():
        old = json.loads((wd / STATE).read_text(encoding="utf-8"))
        if old != state:
            raise CompressError(f"{wd} holds a SEFT run with other options or inputs: rerun with the same ones to "
                                f"resume, or delete {wd}")
    else:
        wd.mkdir(parents=True, exist_ok=True)
        replace_file(wd / STATE, json.dumps(state, indent=2) + "\n")
    recs, counts = reviser_records(_read_jsonl(Path(samples_path)), cfg.reviser_format, cfg.keep_pairs, cfg.seed)
    if not (wd / "reviser.jsonl").is_file():
        _write_jsonl(wd / "reviser.jsonl", recs)
    reviser = wd / "reviser"
    _sft(cfg.reviser_base or str(policy), wd / "reviser.jsonl", reviser, cfg, cfg.lr, device)
    report: dict[str, Any] = {"reviser_pairs": counts, "rounds": []}
    current = str(policy)
    for r in range(1, cfg.rounds + 1):
        rd = wd / f"round-{r}"
        rd.mkdir(exist_ok=True)
        if not (rd / "revised.jsonl").is_file():
            drafts = _generate(current, [p.prompt for p in prompts], cfg, cfg.n, cfg.temperature, cfg.seed + r, device, dtype)
            flat = [(p, d) for p, ds in zip(prompts, drafts, strict=True) for d in ds]
            asks = [cfg.reviser_format.format(prompt=_text(p.prompt), draft=d) for p, d in flat]
            revised = [x[0] for x in _generate(str(reviser), asks, cfg, 1, 0.0, cfg.seed, device, dtype)]
            rows = [{"id": p.id, "prompt": p.prompt, "draft": d, "chosen": v} for (p, d), v in zip(flat, revised, strict=True)]
            if verifier is not None:
                ps, refs = [p.prompt for p, _ in flat], [p.reference for p, _ in flat]
                for row, a, b in zip(rows, _score(verifier, ps, [d for _, d in flat], refs),
                                     _score(verifier, ps, revised, refs), strict=True):
                    row["draft_right"], row["revision_right"] = a, b
            _write_jsonl(rd / "revised.jsonl", rows)
        rows = _read_jsonl(rd / "revised.jsonl")
        entry: dict[str, Any] = {"round": r, "samples": len(rows),
                                 "unchanged": sum(x["draft"].strip() == x["chosen"].strip() for x in rows) / len(rows)}
        if verifier is not None:
            entry.update(rates([x["draft_right"] for x in rows], [x["revision_right"] for x in rows]))
        report["rounds"].append(entry)
        _sft(current, rd / "revised.jsonl", rd / "policy", cfg, cfg.lr, device)
        current = str(rd / "policy")
    with atomic_dir(output, inputs, force, marker=False) as tmp:
        for f in Path(current).iterdir():
            if f.is_file() and f.name not in (PROVENANCE_FILE, CARD_FILE):
                shutil.copy2(f, tmp / f.name)
        _provenance(tmp, Path(current), inputs, cfg, report)
    shutil.rmtree(wd, ignore_errors=True)
    return report


def _provenance(tmp: Path, last: Path, inputs: list[str], cfg: SeftConfig, report: dict[str, Any]) -> None:
    """compress.json (the SEFT recipe, its report, the last policy SFT's record) and the model card."""
    from compress.checkpoint.card import CARD_FILE, model_card
    from compress.checkpoint.provenance import PROVENANCE_FILE, write_provenance

    last_rec = json.loads((last / PROVENANCE_FILE).read_text(encoding="utf-8"))
    write_provenance(tmp, inputs=inputs, recipe={"method": "seft", **cfg.model_dump()},
                     extra={"seft": report, "last_sft": last_rec.get("recipe")})
    rec = json.loads((tmp / PROVENANCE_FILE).read_text(encoding="utf-8"))
    lines = ["| round | samples | unchanged | fix rate | keep rate | sample acc | revision acc |", "|---|---|---|---|---|---|---|"]
    for e in report["rounds"]:
        cells = ["-" if e.get(k) is None else f"{e[k]:.3f}"
                 for k in ("unchanged", "fix_rate", "keep_rate", "sample_acc", "revision_acc")]
        lines.append(f"| {e['round']} | {e['samples']} | " + " | ".join(cells) + " |")
    (tmp / CARD_FILE).write_text(model_card(rec, title=f"{Path(inputs[0]).name} + SEFT", method="seft",
                                            tags=("distill", "seft"), report="\n".join(lines)), encoding="utf-8")
