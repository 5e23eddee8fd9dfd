"""The model card (`README.md`) of every output folder, as mergekit and the Hub expect one.

Front matter (YAML): `base_model` (the input models), `library_name: transformers`, `tags`
(`compress`, the command, the method); then the method, how the folder was made (the command line
or the recipe), the input models with their config hashes, the package versions, and the report
table the command produced, if any. Everything comes from the provenance record (`compress.json`),
so the card and the record cannot disagree.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

CARD_FILE = "README.md"


def _front_matter(record: dict[str, Any], method: str | None, tags: list[str]) -> str:
    bases = [Path(i["path"]).name for i in record.get("inputs", []) if i.get("path")]
    meta: dict[str, Any] = {"library_name": "transformers"}
    if bases:
        meta["base_model"] = bases if len(bases) > 1 else bases[0]
    all_tags = ["compress", *tags]
    if method and method not in all_tags:
        all_tags.append(method)
    meta["tags"] = all_tags
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def model_card(record: dict[str, Any], *, title: str, method: str | None = None, tags: list[str] | tuple[str, ...] = (),
               report: str | None = None) -> str:
    """The card's text from a provenance record; `report` is a Markdown table (or any Markdown)."""
    lines = [_front_matter(record, method, list(tags)), f"# {title}", ""]
    lines.append(f"Made by `compress`{f' with **{method}**' if method else ''} on {record.get('created', '?')}.")
    lines.append("")
    if record.get("recipe") is not None:
        lines += ["## Recipe", "", "```yaml", yaml.safe_dump(record["recipe"], sort_keys=False).rstrip(), "```", ""]
    if record.get("command"):
        lines += ["## Command", "", "```bash", str(record["command"]), "```", ""]
    inputs = record.get("inputs") or []
    if inputs:
        lines += ["## Inputs", "", "| input | config sha256 |", "|---|---|"]
        for i in inputs:
            lines.append(f"| `{i.get('path', '?')}` | {str(i.get('config_sha256', '—'))[:16]} |")
        lines.append("")
    if report:
        lines += ["## Report", "", report.rstrip(), ""]
    versions = record.get("versions") or {}
    if versions:
        lines += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    lines += ["How it was made, in full: `compress.json` in this folder.", ""]
    return "\n".join(lines)


def write_model_card(folder: str | os.PathLike[str], *, title: str | None = None, method: str | None = None,
                     tags: list[str] | tuple[str, ...] = (), report: str | None = None) -> Path:
    """Write `README.md` into `folder` from its `compress.json` (written first)."""
    from compress.checkpoint.provenance import PROVENANCE_FILE

    folder = Path(folder)
    record = json.loads((folder / PROVENANCE_FILE).read_text())
    name = title or Path(str(record.get("output") or folder.name)).name.lstrip(".").split(".tmp-")[0]
    path = folder / CARD_FILE
    path.write_text(model_card(record, title=name, method=method, tags=tags, report=report))
    return path
