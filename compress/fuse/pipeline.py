"""`compress fuse run RECIPE.yml -o OUT`: a pipeline of compress commands, resumable stage by stage.

A recipe (YAML):

    name: fusechat-small
    vars: {pivot: /models/smollm2, data: train.jsonl}
    stages:
      - name: rep-pivot
        run: fuse represent {pivot} --data {data} --k 10
      - name: target
        run: fuse train {pivot} --data {data} --pivot-rep {rep-pivot} --source {aligned}
      - name: eval
        run: eval run {merged} --tasks gsm8k
        output: none                  # no -o; stdout is kept in OUT/logs/eval.stdout (JSON recorded)

`run` is a compress command line (a string split like a shell, or a list). `{name}` is a variable or
the output of an earlier stage: each stage writes `-o OUT/stages/NAME`, an ordinary folder. Stages
run one after the other as separate processes (`python -m compress ...`).

Resuming: OUT/pipeline.json records every stage's command, status, times and the provenance of its
output (its compress.json). A rerun skips every finished stage whose command is unchanged and whose
output is still there, and runs the rest; a changed stage reruns it and every stage after it. A command
is changed when its text is, or when a plain file it names (data, a recipe: not a stage's output) has
other contents than at the last run: its SHA-256 is recorded with the stage. A stage that reruns
replaces its own earlier output (OUT/stages/NAME belongs to the pipeline).
Before any work the recipe is checked: unknown `{names}`, references to later stages, duplicate names,
and path arguments that neither exist nor come from an earlier stage are one error naming the stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from compress.errors import CompressError

PIPELINE_FORMAT = "compress-pipeline/1"
_REF = re.compile(r"\{([A-Za-z0-9_.-]+)\}")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    run: str | list[str]
    output: Literal["folder", "file", "none"] = "folder"
    suffix: str = Field(".json", description="File name suffix of an `output: file` stage.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"stage name {v!r} must be letters, digits, '.', '_' or '-'")
        return v


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "pipeline"
    vars: dict[str, str | int | float] = Field(default_factory=dict)
    stages: list[Stage]


def load_recipe(path: str | os.PathLike[str]) -> tuple[Recipe, str]:
    """The recipe and its text; a malformed file is one CompressError."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise CompressError(f"recipe not found: {path}")
    text = p.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CompressError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise CompressError(f"{path}: {where}: {err['msg']}") from None
    if not recipe.stages:
        raise CompressError(f"{path} has no stages")
    return recipe, text


def _stage_output(out: Path, st: Stage) -> Path | None:
    if st.output == "none":
        return None
    return out / "stages" / (st.name + (st.suffix if st.output == "file" else ""))


def plan(recipe: Recipe, out: Path, where: str = "recipe") -> list[dict[str, Any]]:
    """Every stage's argv with references resolved; checks names, references and path arguments."""
    values: dict[str, str] = {k: str(v) for k, v in recipe.vars.items()}
    produced: set[str] = set()
    seen: set[str] = set()
    stages = []
    for st in recipe.stages:
        if st.name in seen:
            raise CompressError(f"{where}: two stages are called {st.name!r}")
        if st.name in values and st.name not in seen:
            raise CompressError(f"{where}: stage {st.name!r} has the name of a variable")
        later = {s.name for s in recipe.stages} - seen - {st.name}
        args = shlex.split(st.run) if isinstance(st.run, str) else [str(a) for a in st.run]

        def sub(m: re.Match, st=st, later=later) -> str:
            key = m.group(1)
            if key in values:
                return values[key]
            if key in later or key == st.name:
                raise CompressError(f"{where}: stage {st.name!r} uses {{{key}}}, the output of a later stage")
            raise CompressError(f"{where}: stage {st.name!r} names {{{key}}}, which is neither a variable nor an "
                                "earlier stage")

        argv = [_REF.sub(sub, a) for a in args]
        if not argv:
            raise CompressError(f"{where}: stage {st.name!r} has an empty command")
        for a in argv:
            if a.startswith("-") or os.sep not in a or a in produced:
                continue
            if not any(a == p or a.startswith(p + os.sep) for p in produced) and not Path(a).exists():
                raise CompressError(f"{where}: stage {st.name!r} names {a}, which does not exist and no earlier stage "
                                    "makes")
        inputs = {a: _sha256(Path(a)) for a in argv if os.sep in a and a not in produced and Path(a).is_file()}
        target = _stage_output(out, st)
        if target is not None:
            argv += ["-o", str(target)]
            values[st.name] = str(target)
            produced.add(str(target))
        seen.add(st.name)
        stages.append({"name": st.name, "argv": argv, "output": str(target) if target else None, "inputs": inputs})
    return stages


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _provenance(path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    p = Path(path)
    for f in (p / "compress.json", p / "eval.json", p / "align.json", p / "rep.json"):
        if f.is_file():
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            return {"file": f.name, "content": data if f.name != "eval.json" else {"results": data.get("results")}}
    return {"file": p.name, "exists": p.exists()}


def _stdout_json(log: Path) -> dict[str, Any] | None:
    """A stage without an output folder: its `--json` answer, when it printed one."""
    try:
        return {"stdout_json": json.loads(log.read_text(encoding="utf-8"))}
    except (OSError, ValueError):
        return None


def _check_out(out: Path, recipe: Recipe, force: bool) -> dict[str, Any] | None:
    """The previous state of OUT (resume), None for a fresh run; refuses a folder that is not a pipeline."""
    import shutil

    from compress.checkpoint.atomic import check_output

    state_file = out / "pipeline.json"
    if state_file.is_file() and not force:
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise CompressError(f"{state_file} is damaged: pass --force to start again") from None
        if state.get("format") != PIPELINE_FORMAT:
            raise CompressError(f"{out} is not a compress pipeline folder: choose another output")
        from compress.checkpoint.lock import acquire

        acquire(out)
        return state
    check_output(out, (), force)
    if out.exists():
        shutil.rmtree(out)
    return None


def run_recipe(recipe_path: str | os.PathLike[str], output: str | os.PathLike[str], *, force: bool = False,
               dry_run: bool = False, python: str | None = None) -> dict[str, Any]:
    """Run (or resume) the recipe's stages into OUT; returns the pipeline state."""
    from compress import progress
    from compress.checkpoint.atomic import replace_file
    from compress.checkpoint.provenance import write_provenance

    recipe, text = load_recipe(recipe_path)
    out = Path(output).resolve()
    stages = plan(recipe, out, str(recipe_path))
    if dry_run:
        return {"stages": [{**s, "status": "planned", "command": shlex.join(["compress", *s["argv"]])} for s in stages]}
    old = _check_out(out, recipe, force)
    (out / "stages").mkdir(parents=True, exist_ok=True)
    if not (out / "compress.json").exists():
        write_provenance(out, inputs=[str(recipe_path)])
    replace_file(out / "recipe.yml", text)
    prev = {s["name"]: s for s in (old or {}).get("stages", [])}
    state: dict[str, Any] = {"format": PIPELINE_FORMAT, "name": recipe.name, "recipe": recipe.model_dump(),
                             "stages": []}
    rerun_rest = False
    for s in stages:
        before = prev.get(s["name"])
        done = (before is not None and before.get("status") == "done" and before.get("argv") == s["argv"]
                and before.get("inputs", s["inputs"]) == s["inputs"]
                and (s["output"] is None or Path(s["output"]).exists()) and not rerun_rest)
        if done:
            state["stages"].append({**before, "status": "done", "resumed": True})
            progress.info(f"stage {s['name']}: done before, skipped")
            continue
        rerun_rest = True
        rec = {**s, "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        state["stages"].append(rec)
        replace_file(out / "pipeline.json", json.dumps(state, indent=2))
        progress.info(f"stage {s['name']}: compress {shlex.join(s['argv'])}")
        t0, c0 = time.perf_counter(), os.times()
        # the stage's output is the pipeline's own intermediate: a rerun replaces what an older run left
        again = ["--force"] if s["output"] and Path(s["output"]).exists() else []
        cmd = [python or sys.executable, "-m", "compress", *s["argv"], *again]
        log = out / "logs" / f"{s['name']}.stdout"
        log.parent.mkdir(exist_ok=True)
        with open(log, "w", encoding="utf-8") as fh:
            proc = subprocess.run(cmd, stdout=fh, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).resolve().parents[2])] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])})
        rec["stdout"] = str(log)
        c1 = os.times()
        rec.update({"exit": proc.returncode, "wall_s": time.perf_counter() - t0,
                    "cpu_s": (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)})
        if proc.returncode != 0:
            rec["status"] = "failed"
            replace_file(out / "pipeline.json", json.dumps(state, indent=2))
            raise CompressError(f"stage {s['name']!r} failed (exit {proc.returncode}); fix it and run the same command "
                                "again to resume from this stage")
        rec.update({"status": "done", "provenance": _provenance(s["output"]) or _stdout_json(log)})
        replace_file(out / "pipeline.json", json.dumps(state, indent=2))
    state["final"] = next((s["output"] for s in reversed(stages) if s["output"]), None)
    replace_file(out / "pipeline.json", json.dumps(state, indent=2))
    return state
