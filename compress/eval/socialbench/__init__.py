"""SocialBench (formerly RoleInteract): the sociality of role-playing agents, as `compress eval` tasks.

One task per reported column and language, `socialbench_<column>_<lang>`:

| column | reported as | file | `meta.category` |
|---|---|---|---|
| sa_style | SA Style | self_awareness.json | Individual-SA-RoleStyle |
| sa_know | SA Know. | self_awareness.json | Individual-SA-RoleKnowledge |
| ep_situ | EP Situ. | emotional_perception.json | Individual-EP-SituationUnderstanding |
| ep_emo | EP Emo. | emotional_perception.json | Individual-EP-DialogueEmotionDetect, -HumorSarcasmDetect |
| cm_short | CM Short | conversation_memory.json | Individual-MEM (also -Short/-Long), dialogue < 40 utterances |
| cm_long | CM Long | conversation_memory.json | the same, 40 utterances or more |
| sp_pos / sp_neu / sp_neg | SP Pos. / Neu. / Neg. | social_preference.json | Group-SAP-Positive / -Neutral / -Negative |

Group names select several tasks: `socialbench` (all 18), `socialbench_en`, `socialbench_ep`,
`socialbench_ep_en`, `socialbench_ep_situ` (both languages) and so on. The data has no licence:
the project neither ships nor downloads it; `--task-data socialbench=DIR` points at a copy of the
official `data/` folder (or one file per dimension, e.g. `--task-data socialbench_ep=emotional_perception.json`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    key: str
    label: str  # as the paper's table heads it
    file: str  # the official data file holding it
    categories: tuple[str, ...]


COLUMNS: tuple[Column, ...] = (
    Column("sa_style", "SA Style", "self_awareness.json", ("Individual-SA-RoleStyle",)),
    Column("sa_know", "SA Know.", "self_awareness.json", ("Individual-SA-RoleKnowledge",)),
    Column("ep_situ", "EP Situ.", "emotional_perception.json", ("Individual-EP-SituationUnderstanding",)),
    Column("ep_emo", "EP Emo.", "emotional_perception.json",
           ("Individual-EP-DialogueEmotionDetect", "Individual-EP-HumorSarcasmDetect")),
    Column("cm_short", "CM Short", "conversation_memory.json",
           ("Individual-MEM", "Individual-MEM-Short", "Individual-MEM-Long")),
    Column("cm_long", "CM Long", "conversation_memory.json",
           ("Individual-MEM", "Individual-MEM-Short", "Individual-MEM-Long")),
    Column("sp_pos", "SP Pos.", "social_preference.json", ("Group-SAP-Positive",)),
    Column("sp_neu", "SP Neu.", "social_preference.json", ("Group-SAP-Neutral",)),
    Column("sp_neg", "SP Neg.", "social_preference.json", ("Group-SAP-Negative",)),
)
COLUMN = {c.key: c for c in COLUMNS}
LANGS: tuple[str, ...] = ("en", "zh")
DIMENSIONS: tuple[str, ...] = ("sa", "ep", "cm", "sp")
PREFIX = "socialbench"
LONG_DIALOGUE = 40  # CM Long: 40 utterances or more (the official memory runner's split)
MODES: tuple[str, ...] = ("generative", "loglik")
PROMPT_SOURCES: tuple[str, ...] = ("template", "instruction")


def task_name(column: str, lang: str) -> str:
    return f"{PREFIX}_{column}_{lang}"


TASKS: tuple[str, ...] = tuple(task_name(c.key, lang) for lang in LANGS for c in COLUMNS)


def split_task(task: str) -> tuple[Column, str]:
    """'socialbench_ep_situ_zh' -> (COLUMN['ep_situ'], 'zh')."""
    body = task[len(PREFIX) + 1:]
    col, _, lang = body.rpartition("_")
    return COLUMN[col], lang


def _groups() -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {PREFIX: TASKS}
    for lang in LANGS:
        out[f"{PREFIX}_{lang}"] = tuple(t for t in TASKS if t.endswith(f"_{lang}"))
    for dim in DIMENSIONS:
        cols = [c.key for c in COLUMNS if c.key.startswith(dim + "_")]
        out[f"{PREFIX}_{dim}"] = tuple(task_name(c, lang) for lang in LANGS for c in cols)
        for lang in LANGS:
            out[f"{PREFIX}_{dim}_{lang}"] = tuple(task_name(c, lang) for c in cols)
    for c in COLUMNS:
        out[f"{PREFIX}_{c.key}"] = tuple(task_name(c.key, lang) for lang in LANGS)
    return out


GROUPS: dict[str, tuple[str, ...]] = _groups()


def is_task(name: str) -> bool:
    return name in TASKS


def expand(name: str) -> tuple[str, ...] | None:
    """The tasks a name stands for (a task itself, or a group), None for other names."""
    if name in TASKS:
        return (name,)
    return GROUPS.get(name)


def data_candidates(task: str) -> tuple[str, ...]:
    """Where a task's file is looked for inside a data folder (shared/data layout, or the official repo's)."""
    col, _ = split_task(task)
    return (f"socialbench/{col.file}", f"SocialBench/data/{col.file}", f"data/{col.file}")
