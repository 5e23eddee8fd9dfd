"""Re-score saved SocialBench generative samples with the official letter rule and with compress's.

    python bench/socialbench_rescore.py RUN/samples [--out bench/results/roleplay_rescore.json]

Reads the `--log-samples` files of a `compress eval --tasks socialbench_* --socialbench-mode generative`
run (MODEL.TASK.jsonl) and parses every reply twice: `parse_answer(text)` (the official rule: any
capital A-H, the first pattern match) and `parse_answer(text, letters, options, single)` (only the
item's own letters; on single-choice items an echoed or made-up option list is no choice). The item's
options are read back from the prompt's option lines ("A. text"). Prints per model and task the strict
score and coverage under both rules and how many replies changed reading; writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from compress.eval.socialbench.scoring import parse_answer, score_choice

_OPTION = re.compile(r"^([A-H])\. (.*)$")


def options_of(prompt: str) -> tuple[list[str], list[str]]:
    """The item's option letters and texts, from the last run of option lines in its prompt."""
    letters, texts = [], []
    for line in prompt.splitlines():
        m = _OPTION.match(line)
        if m:
            if m.group(1) == "A":
                letters, texts = [], []
            letters.append(m.group(1))
            texts.append(m.group(2).strip())
    return letters, texts


def rescore(path: Path) -> dict:
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").split("\n") if x.strip()]
    out = {"items": len(rows), "changed": 0, "official": [0.0, 0], "compress": [0.0, 0], "examples": []}
    for r in rows:
        letters, texts = options_of(r["prompt"])
        single = len(set(r["label"])) == 1
        old, new = parse_answer(r["response"]), parse_answer(r["response"], letters, texts, single)
        for key, p in (("official", old), ("compress", new)):
            s = score_choice(p.letters, r["label"])
            out[key][0] += s or 0.0
            out[key][1] += s is not None
        if old.letters != new.letters:
            out["changed"] += 1
            if len(out["examples"]) < 3:
                out["examples"].append({"response": r["response"][:80], "label": r["label"],
                                        "official": old.letters, "compress": new.letters, "why": new.pattern})
    n = max(out["items"], 1)
    for key in ("official", "compress"):
        out[key] = {"strict": 100 * out[key][0] / n, "coverage": 100 * out[key][1] / n}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("samples", type=Path)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "roleplay_rescore.json"))
    args = ap.parse_args()
    res = {f.stem: rescore(f) for f in sorted(args.samples.glob("*.jsonl"))}
    print("| model.task | items | replies read differently | strict official → compress | coverage official → compress |")
    print("|---|---:|---:|---|---|")
    for k, r in res.items():
        print(f"| {k} | {r['items']} | {r['changed']} | {r['official']['strict']:.1f} → {r['compress']['strict']:.1f} | "
              f"{r['official']['coverage']:.1f} → {r['compress']['coverage']:.1f} |")
    Path(args.out).write_text(json.dumps({"samples": str(args.samples), "results": res}, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
