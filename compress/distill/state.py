"""Step checkpoints of a distillation run, for `--resume`: safetensors and JSON only, never a pickle.

A checkpoint is a folder `step-NNNNNNN` in the checkpoint folder, written atomically (`atomic_dir`:
a killed save leaves a temporary that the next run removes):

- `student/`   the student's weights (fp32 master weights), safetensors;
- `optimizer/` the optimizer's state tensors (AdamW: step, exp_avg, exp_avg_sq per parameter), safetensors;
- `rng/`       every process's random states (torch CPU and CUDA, Python, NumPy) stacked by rank;
- `trainer.json` format, step, epoch, batches done in the epoch, the run's fingerprint, the optimizer's
  parameter groups and the LR scheduler's state (plain JSON numbers);
- `compress.json` provenance, and `manifest.json` (written last): size and sha256 of every other file.

Resuming verifies the folder before reading anything: the manifest must list exactly the files that
are there (a file added later, such as a pickle, is refused), with their sizes and hashes; then the
fingerprint must match the new run's (the data, the student's and teachers' weights, every option
that changes the result, the number of processes), so another student's checkpoint or a changed
`--lr` is refused with one error line. Tensors are read with safetensors only.

Distributed runs: every process takes part (the full state dicts are gathered with
`torch.distributed.checkpoint.state_dict`, which handles DDP and FSDP; each process's RNG state is
gathered), and the main process writes. DeepSpeed keeps its optimizer state inside its engine and
is not supported here.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from compress.checkpoint.provenance import PROVENANCE_FILE, file_sha256, write_provenance
from compress.errors import CompressError

STATE_FORMAT = "compress-distill-state/1"
MANIFEST = "manifest.json"
TRAINER = "trainer.json"
_STEP = re.compile(r"^step-(\d{7})$")
PARTS = ("student", "optimizer", "rng")


def step_name(step: int) -> str:
    return f"step-{step:07d}"


def checkpoints(folder: Path) -> list[Path]:
    """The step checkpoint folders in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _STEP.match(p.name) and p.is_dir())


def start_fresh(folder: Path, force: bool) -> None:
    """A run without --resume: refuse to mix with an earlier run's checkpoints; --force removes them."""
    old = checkpoints(folder)
    if not old:
        return
    if not force:
        raise CompressError(f"{folder} holds checkpoints of an earlier run ({old[-1].name}): pass --resume to continue "
                            "it, or --force to delete them and start over")
    for p in old:
        shutil.rmtree(p)


# ---------------------------------------------------------------- fingerprint

def fingerprint(options: dict[str, Any], data: str, student: str, *, teacher: str | None = None,
                ref_teacher: str | None = None, teacher_cache: str | None = None, ref_model: str | None = None,
                world_size: int = 1) -> dict[str, Any]:
    """What decides a run's result: data fingerprint, weight hashes of every model, options, processes."""
    from compress.distill.teacher import model_hash  # TODO(evalhouse): the shared checkpoint/hashing.py hash

    cache = None
    if teacher_cache:
        cache = file_sha256(Path(teacher_cache) / "cache.json")
    return {"data": data, "student": model_hash(student),
            "teacher": model_hash(teacher) if teacher and not teacher_cache else None,
            "teacher_cache": cache, "ref_teacher": model_hash(ref_teacher) if ref_teacher and not teacher_cache else None,
            "ref_model": model_hash(ref_model) if ref_model else None,
            "options": options, "world_size": world_size}


_WHAT = {"data": "the data (or its tokenisation) differs", "student": "the student's weights differ",
         "teacher": "the teacher differs", "teacher_cache": "the teacher cache differs",
         "ref_teacher": "the reference teacher differs", "ref_model": "the DPO reference model differs"}


def difference(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    """A phrase naming the first difference between two fingerprints, or None when they agree."""
    for key, what in _WHAT.items():
        if saved.get(key) != now.get(key):
            return what
    if saved.get("world_size") != now.get("world_size"):
        return f"the number of processes differs ({saved.get('world_size')} then, {now.get('world_size')} now)"
    old, new = saved.get("options") or {}, now.get("options") or {}
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            return f"--{name.replace('_', '-')} is {new.get(name)!r} now, {old.get(name)!r} then"
    return None


# ---------------------------------------------------------------- random states

def rng_state() -> dict[str, torch.Tensor]:
    """This process's random states as tensors: torch CPU (and CUDA), Python's and NumPy's Mersenne Twisters."""
    import numpy as np

    version, mt, gauss = random.getstate()
    _, np_mt, np_pos, np_has, np_gauss = np.random.get_state()
    out = {"torch": torch.get_rng_state(),
           "python": torch.tensor([version, *mt], dtype=torch.int64),
           "python_gauss": torch.tensor([0.0 if gauss is None else 1.0, gauss or 0.0], dtype=torch.float64),
           "numpy": torch.tensor([*np_mt.tolist(), np_pos, np_has], dtype=torch.int64),
           "numpy_gauss": torch.tensor([float(np_gauss)], dtype=torch.float64)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"].to(torch.uint8).cpu().clone())  # a row view would be read from its storage start
    py = state["python"].tolist()
    has, gauss = state["python_gauss"].tolist()
    random.setstate((int(py[0]), tuple(int(v) for v in py[1:]), gauss if has else None))
    nv = state["numpy"].tolist()
    np.random.set_state(("MT19937", np.array(nv[:-2], dtype=np.uint32), int(nv[-2]), int(nv[-1]),
                         float(state["numpy_gauss"][0])))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].to(torch.uint8).cpu().clone())


def gather_rng(accelerator) -> dict[str, torch.Tensor]:
    """Every process's random states, stacked by process index (all processes must call this)."""
    mine = rng_state()
    if accelerator.num_processes == 1:
        return {k: v[None] for k, v in mine.items()}
    return {k: accelerator.gather(v[None].to(accelerator.device)).cpu() for k, v in mine.items()}


# ---------------------------------------------------------------- trainer.json

class TrainerState(BaseModel):
    """`trainer.json`: where the run stood and the non-tensor state of optimizer and scheduler."""

    model_config = ConfigDict(extra="forbid")
    format: str
    step: int = Field(ge=1)
    epoch: int = Field(ge=0)
    batches_in_epoch: int = Field(ge=0)
    fingerprint: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    world_size: int = Field(ge=1)


@dataclass
class Parts:
    """The objects a checkpoint saves and restores."""

    accelerator: Any
    model: torch.nn.Module  # the prepared (possibly DDP/FSDP-wrapped) module
    optimizer: Any  # the prepared optimizer (accelerate's wrapper)
    scheduler: Any
    shapes: dict[str, tuple[int, ...]]  # the unwrapped model's state-dict names and shapes

    @property
    def torch_optimizer(self) -> torch.optim.Optimizer:
        return getattr(self.optimizer, "optimizer", self.optimizer)


def _split_optimizer(osd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state dict (keyed by parameter names) -> its tensors, and the rest as JSON."""
    tensors, scalars = {}, {}
    for pname, st in osd["state"].items():
        for key, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pname}/{key}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pname}/{key}"] = v
    return tensors, {"param_groups": osd["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for name, v in [*tensors.items(), *info.get("scalars", {}).items()]:
        pname, _, key = name.rpartition("/")
        state.setdefault(pname, {})[key] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in info["param_groups"]]
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------- save

def save(parts: Parts, folder: Path, step: int, position: dict[str, int], fp: dict[str, Any], keep: int,
         inputs: Sequence[str]) -> Path:
    """Write `step-NNNNNNN` atomically (every process calls this; the main process writes)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    acc = parts.accelerator
    rng = gather_rng(acc)
    msd, osd = get_state_dict(parts.model, parts.torch_optimizer,
                              options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    path, error = folder / step_name(step), None
    if acc.is_main_process:
        try:
            opt_tensors, opt_info = _split_optimizer(osd)
            trainer = TrainerState(format=STATE_FORMAT, step=step, fingerprint=fp, optimizer=opt_info,
                                   scheduler=parts.scheduler.state_dict(), world_size=acc.num_processes, **position)
            _write(path, {"student": msd, "optimizer": opt_tensors, "rng": rng}, trainer, inputs)
            for old in checkpoints(folder)[:-keep] if keep > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException as e:  # noqa: BLE001 - re-raised below, after the other processes know
            error = e
    if acc.num_processes > 1:
        failed = acc.reduce(torch.tensor([0.0 if error is None else 1.0], device=acc.device), "sum")
        if error is None and float(failed) > 0:
            raise CompressError(f"the main process could not write the checkpoint {path}")
    if error is not None:
        raise error
    return path


def _write(path: Path, tensors: dict[str, dict[str, torch.Tensor]], trainer: TrainerState, inputs: Sequence[str]) -> None:
    from compress.checkpoint.atomic import atomic_dir
    from compress.checkpoint.writer import write_tensors

    with atomic_dir(path, inputs) as tmp:
        for part in PARTS:
            (tmp / part).mkdir()
            write_tensors(tmp / part, [(n, t.detach().cpu().contiguous()) for n, t in tensors[part].items()])
        (tmp / TRAINER).write_text(trainer.model_dump_json(indent=1) + "\n")
        write_provenance(tmp, inputs=list(inputs), extra={"distill_state": STATE_FORMAT, "step": trainer.step})
        files = sorted(f for f in tmp.rglob("*") if f.is_file())
        manifest = {"format": STATE_FORMAT,
                    "files": {f.relative_to(tmp).as_posix(): {"size": f.stat().st_size, "sha256": file_sha256(f)}
                              for f in files}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


# ---------------------------------------------------------------- verify and load

def verify(path: Path) -> dict[str, dict[str, Any]]:
    """Check a checkpoint folder against its manifest before anything in it is read; return the file list."""
    mf = path / MANIFEST
    if not mf.is_file():
        legacy = [p.name for p in path.iterdir() if p.suffix in (".pkl", ".bin", ".pt")] if path.is_dir() else []
        if legacy or (path / TRAINER).is_file():
            raise CompressError(f"--resume: {path} was written by an older compress as pickles ({', '.join(legacy) or TRAINER}), "
                                "which are never loaded: start the run again without --resume")
        raise CompressError(f"--resume: {path} is not a complete checkpoint (no {MANIFEST})")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
        files = manifest["files"]
        ok = manifest["format"] == STATE_FORMAT and isinstance(files, dict) and all(
            isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str) for v in files.values())
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise CompressError(f"--resume: {mf} is damaged or of an unknown format: start the run again without --resume")
    present = {f.relative_to(path).as_posix() for f in path.rglob("*") if not f.is_dir() and f.name != MANIFEST}
    extra = sorted(present - set(files))
    if extra:
        raise CompressError(f"--resume: {path} holds {extra[0]}, which is not part of the checkpoint (not in its manifest): "
                            "refusing a changed checkpoint folder")
    for rel, meta in files.items():
        f = path / rel
        if rel not in present or f.is_symlink() or not f.is_file():
            raise CompressError(f"--resume: {path} lacks {rel}: the checkpoint is incomplete")
        if f.stat().st_size != meta["size"] or file_sha256(f) != meta["sha256"]:
            raise CompressError(f"--resume: {f} does not match its manifest (changed or damaged)")
    if not {TRAINER, PROVENANCE_FILE} <= set(files):
        raise CompressError(f"--resume: {path} lacks {TRAINER}: the checkpoint is incomplete")
    return files


def read_trainer(path: Path) -> TrainerState:
    try:
        st = TrainerState.model_validate_json((path / TRAINER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValidationError) as e:
        raise CompressError(f"--resume: {path / TRAINER} is damaged ({str(e).splitlines()[0]})") from None
    if st.format != STATE_FORMAT:
        raise CompressError(f"--resume: {path} has the unknown state format {st.format!r}")
    return st


def _read_part(path: Path, part: str, files: dict[str, Any]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for rel in sorted(files):
        if rel.startswith(part + "/") and rel.endswith(".safetensors"):
            try:
                out.update(load_file(str(path / rel)))
            except (OSError, SafetensorError) as e:
                raise CompressError(f"--resume: cannot read {path / rel}: {e}") from None
    return out


def load(parts: Parts, path: Path, fp: dict[str, Any]) -> TrainerState:
    """Verify `path`, check its fingerprint against `fp`, and restore every part into `parts`."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    files = verify(path)
    st = read_trainer(path)
    why = difference(st.fingerprint, fp)
    if why:
        raise CompressError(f"--resume: {path} was made by another run: {why}. Resume with the same inputs and "
                            "options, or start anew without --resume (--force deletes the old checkpoints)")
    msd = _read_part(path, "student", files)
    want, got = parts.shapes, {n: tuple(t.shape) for n, t in msd.items()}
    if got != want:
        bad = sorted(set(got) ^ set(want)) or sorted(n for n in want if got[n] != want[n])
        raise CompressError(f"--resume: {path} holds another architecture than the student (e.g. {bad[0]})")
    osd = _join_optimizer(_read_part(path, "optimizer", files), st.optimizer)
    try:
        set_state_dict(parts.model, parts.torch_optimizer, model_state_dict=msd, optim_state_dict=osd,
                       options=StateDictOptions(full_state_dict=True))
        parts.scheduler.load_state_dict(st.scheduler)
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise CompressError(f"--resume: {path} does not fit this run's model or optimizer: {str(e).splitlines()[0]}") from None
    rng = _read_part(path, "rng", files)
    rank = parts.accelerator.process_index
    set_rng_state({k: v[rank] for k, v in rng.items()})
    return st
