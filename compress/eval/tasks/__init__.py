"""The tasks `compress eval` knows: lm-eval task configs (YAML beside this file) on local data.

Each YAML is lm-eval 0.4.13's built-in task of the same name with its prompts (`doc_to_text`,
`doc_to_choice`, `doc_to_target`, metrics, generation settings) copied verbatim and its hub
dataset replaced by a `custom_dataset` loader from `adapters.py` that reads local files. Where to
find those files: `TASK_FILES` (paths relative to a data folder such as shared/data).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from compress.errors import CompressError
from compress.eval import socialbench as _sb

HERE = Path(__file__).resolve().parent

# task -> {file key: candidate paths relative to a data folder}; keys starting with "?" are optional
TASK_FILES: dict[str, dict[str, tuple[str, ...]]] = {
    "piqa": {"validation": ("piqa/valid.jsonl",), "labels": ("piqa/valid-labels.lst",)},
    "winogrande": {"validation": ("winogrande/winogrande.jsonl", "winogrande/dev.jsonl")},
    "arc_easy": {"test": ("arc/ARC-Easy-Test.jsonl", "ARC-Easy/ARC-Easy-Test.jsonl")},
    "arc_challenge": {"test": ("arc/ARC-Challenge-Test.jsonl", "ARC-Challenge/ARC-Challenge-Test.jsonl")},
    "boolq": {"validation": ("boolq/val.jsonl", "boolq/dev.jsonl")},
    "openbookqa": {"test": ("openbookqa/test.tsv", "openbookqa/test.jsonl")},
    "hellaswag": {"validation": ("hellaswag/hellaswag_val.jsonl", "hellaswag/val.jsonl", "hellaswag_val.jsonl")},
    "gsm8k": {"test": ("gsm8k/test.jsonl",), "?train": ("gsm8k/train.jsonl",)},
}
LM_EVAL_TASKS: tuple[str, ...] = tuple(TASK_FILES)
PPL_TASK = "ppl"
SOCIALBENCH_TASKS: tuple[str, ...] = _sb.TASKS  # socialbench_<column>_<lang>; groups in socialbench.GROUPS
ALL_TASKS: tuple[str, ...] = (*LM_EVAL_TASKS, *SOCIALBENCH_TASKS, PPL_TASK)
DEFAULT_TASKS: tuple[str, ...] = ("piqa", "winogrande", "arc_easy", "arc_challenge", "boolq", "openbookqa")
PPL_FILE = "wikitext-2-raw/wiki.test.raw"


def parse_tasks(spec: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """'piqa,arc_easy' -> ['piqa', 'arc_easy']; unknown names are refused with the list of known ones."""
    if spec is None:
        return list(DEFAULT_TASKS)
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [t.strip().lower() for t in items if t.strip()]
    if not names:
        raise CompressError(f"no task given: choose from {_available()}")
    unknown = [t for t in names if t not in ALL_TASKS and _sb.expand(t) is None]
    if unknown:
        raise CompressError(f"unknown task {', '.join(unknown)}: available tasks are {_available()}")
    return list(dict.fromkeys(t for n in names for t in (_sb.expand(n) or (n,))))


def _available() -> str:
    cols = ", ".join(c.key for c in _sb.COLUMNS)
    return (f"{', '.join((*LM_EVAL_TASKS, PPL_TASK))}, socialbench_COLUMN_LANG (COLUMN: {cols}; LANG: "
            f"{', '.join(_sb.LANGS)}; groups: socialbench, socialbench_LANG, socialbench_DIMENSION[_LANG] with "
            f"DIMENSION {', '.join(_sb.DIMENSIONS)}, socialbench_COLUMN)")


def task_data_paths(per_task: dict[str, str], tasks: list[str]) -> dict[str, str]:
    """`--task-data` keys (a task or a SocialBench group) -> a path per selected task; a key that
    selects none of `tasks` is refused. A task's own key wins over a group's."""
    out: dict[str, str] = {}
    for key in sorted(per_task, key=lambda k: -len(_sb.expand(k) or (k,))):  # groups first, then narrower keys
        hit = [t for t in (_sb.expand(key) or (key,)) if t in tasks]
        if not hit:
            raise CompressError(f"--task-data given for {key}, which is not in --tasks {','.join(tasks)}")
        out.update({t: per_task[key] for t in hit})
    return out


# ------------------------------------------------------------------------------------ data files
def default_data_dirs(cwd: str | os.PathLike[str] | None = None) -> list[Path]:
    """$COMPRESS_DATA, then `shared/data` in the current folder or any folder above it."""
    out: list[Path] = []
    if os.environ.get("COMPRESS_DATA"):
        out.append(Path(os.environ["COMPRESS_DATA"]))
    here = Path(cwd or os.getcwd()).resolve()
    for d in (here, *here.parents):
        if (d / "shared" / "data").is_dir():
            out.append(d / "shared" / "data")
            break
    return out


@dataclass
class TaskData:
    task: str
    files: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # task-family settings (SocialBench: mode, prompt_source)


def _find(dirs: list[Path], candidates: tuple[str, ...], flat: bool = False) -> Path | None:
    for d in dirs:
        for rel in candidates:
            if (d / rel).is_file():
                return d / rel
            if flat and (d / Path(rel).name).is_file():  # a folder holding the task's files directly
                return d / Path(rel).name
    return None


def resolve_task_data(task: str, data_dirs: list[Path] | None = None, path: str | os.PathLike[str] | None = None,
                      ) -> TaskData:
    """Find the local files of an lm-eval task, or say where they were looked for.

    `path` (from `--task-data TASK=PATH`) is the task's main file or a folder holding its files;
    otherwise each of `data_dirs` (from `--data-dir`, default `default_data_dirs()`) is searched.
    """
    spec = TASK_FILES[task] if task in TASK_FILES else {"test": _sb.data_candidates(task)}
    main_key = next(iter(spec))
    files: dict[str, str] = {}
    flat = path is not None
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise CompressError(f"no data for task {task}: {path} does not exist")
        if p.is_file():
            files[main_key] = str(p)
            dirs = [p.parent]
            rest = {k: v for k, v in spec.items() if k != main_key}
        else:
            dirs = [p]
            rest = spec
    else:
        dirs = data_dirs if data_dirs is not None else default_data_dirs()
        rest = spec
    for key, cands in rest.items():
        optional = key.startswith("?")
        found = _find(dirs, cands, flat)
        if found is None:
            if optional:
                continue
            where = ", ".join(str(d) for d in dirs) or "(no data folder: none given and no shared/data found)"
            raise CompressError(f"no data for task {task}: looked for {' or '.join(cands)} in {where}; "
                                f"pass --data-dir DIR or --task-data {task}=FILE")
        files[key.lstrip("?")] = str(found)
    return TaskData(task, files)


# ---------------------------------------------------------------------------------- task configs
def _function_ctor(loader: yaml.Loader, node: yaml.Node) -> Any:
    """`!function module.fn`: a module beside the YAML (`adapters.piqa`) or any importable one."""
    qual = loader.construct_scalar(node)
    mod, _, fn = str(qual).rpartition(".")
    if (HERE / f"{mod}.py").is_file():
        mod = f"{__name__}.{mod}"
    return getattr(importlib.import_module(mod), fn)


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!function", _function_ctor)


def load_task_yaml(task: str) -> dict[str, Any]:
    """The task's lm-eval config dict (`!function` resolved, `include:` merged)."""
    path = HERE / f"{task}.yaml"
    with open(path, encoding="utf-8") as f:
        cfg = yaml.load(f, Loader=_Loader)  # noqa: S506 - our own packaged files
    inc = cfg.pop("include", None)
    if inc:
        base = load_task_yaml(Path(inc).stem)
        base.update(cfg)
        cfg = base
    return cfg


def task_config(data: TaskData) -> dict[str, Any]:
    """An inline lm-eval task config reading `data.files`."""
    if _sb.is_task(data.task):
        from compress.eval.socialbench.tasks import task_config as socialbench_config

        return socialbench_config(data.task, data.files, data.options, load_task_yaml)
    cfg = load_task_yaml(data.task)
    cfg["dataset_kwargs"] = {"files": dict(data.files)}
    if data.task == "gsm8k" and "train" not in data.files:
        cfg["fewshot_split"] = "test"  # no local train split: lm-eval excludes the doc being answered
    return cfg


def primary_metric(cfg: dict[str, Any]) -> str:
    """The pruning papers' policy (BlockPruner's and SLEB's lm-eval runs): `acc_norm` where the task
    defines it, else `acc` (so WinoGrande and BoolQ report acc, PIQA, HellaSwag and ARC acc_norm);
    generation tasks report `exact_match` after the first filter (gsm8k: strict-match)."""
    names = [m["metric"] for m in cfg.get("metric_list", [])]
    if "acc_norm" in names:
        return "acc_norm"
    if "acc" in names:
        return "acc"
    if names:
        return names[0]
    raise CompressError(f"task {cfg.get('task')} defines no metric")


def metric_key(cfg: dict[str, Any]) -> str:
    """The key of the primary metric in lm-eval's results ('acc_norm,none', 'exact_match,strict-match')."""
    filters = cfg.get("filter_list") or []
    return f"{primary_metric(cfg)},{filters[0]['name'] if filters else 'none'}"
