"""Read and check a SocialBench data file; select the items of one column and language.

The official schema (README "Data Structure" and `dataset.py`): a JSON list of items
`{dialogue: [{from, value}], instruction, choices: {A: text, ...}, label: [...], meta: {lang,
category, name?, profile?, ...}}`. `label` holds option letters (several for multi-answer
items) or, for the memory category, keywords.

A file that is not such a list, or in which more than half of the items are bad, is refused
(`CompressError`). A single bad item inside a good file (a label outside the choices, an empty
dialogue, a missing `meta.category`, ...) is excluded and reported with its index and reason.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.errors import CompressError
from compress.eval.socialbench import COLUMNS, LONG_DIALOGUE, Column

CHOICE_LETTERS = "ABCDEFGH"  # the official answer regex reads A-H
KIND_OF = {  # meta.category -> how its prompt is built and scored
    "Individual-SA-RoleStyle": "sa", "Individual-SA-RoleKnowledge": "sa",
    "Individual-EP-DialogueEmotionDetect": "ep_emotion",
    "Individual-EP-HumorSarcasmDetect": "ep_plain", "Individual-EP-SituationUnderstanding": "ep_plain",
    "Individual-MEM": "mem", "Individual-MEM-Short": "mem", "Individual-MEM-Long": "mem",
    "Group-SAP-Positive": "sp", "Group-SAP-Neutral": "sp", "Group-SAP-Negative": "sp",
}


@dataclass(frozen=True)
class Item:
    """One checked item. `index` is its 0-based position in the file."""

    index: int
    category: str
    kind: str
    lang: str
    dialogue: tuple[tuple[str, str], ...]
    instruction: str
    choices: tuple[tuple[str, str], ...]  # in file order
    label: tuple[str, ...]
    name: str | None = None
    profile: tuple[tuple[str, str], ...] = ()  # role name -> profile text, in file order

    @property
    def letters(self) -> list[str]:
        return [k for k, _ in self.choices]

    @property
    def multi(self) -> bool:
        return self.kind != "mem" and len(set(self.label)) > 1


@dataclass
class FileCheck:
    path: str
    items: list[Item]
    bad: list[dict[str, Any]] = field(default_factory=list)  # {index, reason, category?, lang?}
    notes: list[dict[str, Any]] = field(default_factory=list)  # kept items with a remark
    total: int = 0


def read_json_list(path: str | os.PathLike[str]) -> list[Any]:
    """The file's top-level list (UTF-8, a BOM and CRLF line endings accepted)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise CompressError(f"SocialBench data {path} does not exist") from None
    except UnicodeDecodeError:
        raise CompressError(f"SocialBench data {path} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise CompressError(f"SocialBench data {path} is not JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, list):
        raise CompressError(f"SocialBench data {path} is not in the SocialBench shape: the file must be a JSON list "
                            f"of items, it holds a {type(data).__name__}")
    if not data:
        raise CompressError(f"SocialBench data {path} holds no items")
    return data


def _text(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{what} is not text")
    return v


def _dialogue(raw: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, list) or not raw:
        raise ValueError("empty dialogue" if isinstance(raw, list) else "dialogue is not a list")
    out = []
    for t in raw:
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise ValueError("a dialogue turn is not {from, value}")
        out.append((_text(t["from"], "dialogue.from"), _text(t["value"], "dialogue.value")))
    return tuple(out)


def _choices(raw: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, dict) or len(raw) < 2:
        raise ValueError("choices is not a mapping of two or more options")
    out = []
    for k, v in raw.items():
        if k not in CHOICE_LETTERS:
            raise ValueError(f"choice key {k!r} is not a letter A-H")
        out.append((k, _text(v, f"choice {k}")))
    return tuple(out)


def _profile(meta: dict[str, Any], kind: str) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    name, prof = meta.get("name"), meta.get("profile")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("meta.name is missing")
    if not isinstance(prof, dict) or not prof or not all(isinstance(v, str) for v in prof.values()):
        raise ValueError("meta.profile is not a mapping of role name to text")
    if kind in ("sa", "mem") and name not in prof:
        raise ValueError(f"meta.profile has no profile for meta.name {name!r}")
    return name, tuple((str(k), v) for k, v in prof.items())


def check_item(index: int, raw: Any) -> Item:
    """An `Item`, or ValueError naming what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError("item is not an object")
    meta = raw.get("meta")
    if not isinstance(meta, dict):
        raise ValueError("meta is missing")
    cat = meta.get("category")
    if not isinstance(cat, str) or not cat.strip():
        raise ValueError("meta.category is missing")
    cat = cat.strip()
    if cat not in KIND_OF:
        raise ValueError(f"unknown meta.category {cat!r}")
    kind = KIND_OF[cat]
    lang = meta.get("lang")
    if not isinstance(lang, str) or lang.strip().lower() not in ("en", "zh"):
        raise ValueError(f"meta.lang {lang!r} is not en or zh")
    dialogue = _dialogue(raw.get("dialogue"))
    instruction = raw.get("instruction", "")
    instruction = "" if instruction is None else _text(instruction, "instruction")
    label = raw.get("label")
    if not isinstance(label, list) or not label or not all(isinstance(x, str) and x.strip() for x in label):
        raise ValueError("label is not a non-empty list of text")
    label_t = tuple(x.strip() for x in label)
    choices: tuple[tuple[str, str], ...] = ()
    if kind != "mem":
        choices = _choices(raw.get("choices"))
        outside = [x for x in label_t if x not in dict(choices)]
        if outside:
            raise ValueError(f"label {', '.join(outside)} is not among the choices {', '.join(k for k, _ in choices)}")
    name, profile = _profile(meta, kind) if kind in ("sa", "mem", "sp") else (None, ())
    return Item(index, cat, kind, lang.strip().lower(), dialogue, instruction, choices, label_t, name, profile)


def check_file(path: str | os.PathLike[str]) -> FileCheck:
    """Every item checked; the bad ones listed with their reason. Refuses a file of the wrong shape."""
    data = read_json_list(path)
    out = FileCheck(str(path), [], total=len(data))
    for i, raw in enumerate(data):
        try:
            item = check_item(i, raw)
        except ValueError as e:
            meta = raw.get("meta") if isinstance(raw, dict) else None
            meta = meta if isinstance(meta, dict) else {}
            dia = raw.get("dialogue") if isinstance(raw, dict) else None
            out.bad.append({"index": i, "reason": str(e), "category": meta.get("category"), "lang": meta.get("lang"),
                            "utterances": len(dia) if isinstance(dia, list) else None})
            continue
        out.items.append(item)
        hint = _mem_hint(item)
        if hint:
            out.notes.append({"index": i, "note": hint})
    if len(out.bad) * 2 > len(data):
        first = out.bad[0]
        raise CompressError(f"SocialBench data {path} is not in the SocialBench shape: {len(out.bad)} of {len(data)} "
                            f"items are bad (item {first['index']}: {first['reason']})")
    return out


def _mem_hint(item: Item) -> str | None:
    """A memory item whose -Short/-Long category disagrees with the 40-utterance split (kept; split by length)."""
    if item.kind != "mem" or item.category == "Individual-MEM":
        return None
    long = len(item.dialogue) >= LONG_DIALOGUE
    if long != item.category.endswith("-Long"):
        return f"category {item.category} but {len(item.dialogue)} utterances: counted in CM {'Long' if long else 'Short'}"
    return None


def in_column(item: Item, column: Column, lang: str) -> bool:
    if item.lang != lang or item.category not in column.categories:
        return False
    if item.kind == "mem":
        long = len(item.dialogue) >= LONG_DIALOGUE
        return long == (column.key == "cm_long")
    return True


def _bad_in_column(bad: dict[str, Any], column: Column, lang: str) -> bool:
    cat, lg = bad.get("category"), bad.get("lang")
    if not isinstance(cat, str) or not isinstance(lg, str) or lg.strip().lower() != lang:
        return False
    cat = cat.strip()
    if cat not in column.categories:
        return False
    if KIND_OF.get(cat) != "mem":
        return True
    n = bad.get("utterances")
    return n is None or (n >= LONG_DIALOGUE) == (column.key == "cm_long")


def column_items(check: FileCheck, column: Column, lang: str) -> list[Item]:
    return [it for it in check.items if in_column(it, column, lang)]


def column_report(check: FileCheck, column: Column, lang: str) -> dict[str, Any]:
    """What the column holds and which of its items were excluded (and why)."""
    items = column_items(check, column, lang)
    excluded = [b for b in check.bad if _bad_in_column(b, column, lang)]
    return {"items": len(items), "multi_answer": sum(it.multi for it in items),
            "excluded": [{"index": b["index"], "reason": b["reason"]} for b in excluded],
            "empty_instruction": sum(not it.instruction.strip() for it in items),
            "file_items": check.total, "file_bad_items": len(check.bad)}


def known_columns() -> list[str]:
    return [c.key for c in COLUMNS]
