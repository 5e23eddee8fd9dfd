"""Tiny teacher/student pair (shared real BPE tokenizer) and a small preference file."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.fixtures import WIKI_VALID, make_tiny_model


def make_pairs(path: Path, n: int = 12, seed: int = 0, generated: bool = False) -> Path:
    rng, src_rng = random.Random(seed), random.Random(seed + 1)
    words = [w for w in WIKI_VALID.read_text(encoding="utf-8").split() if w.isalpha()][:3000]
    rows = []
    for _ in range(n):
        rec = {"prompt": " ".join(rng.choices(words, k=6)), "chosen": " ".join(rng.choices(words, k=rng.randint(5, 12))),
               "rejected": " ".join(rng.choices(words, k=rng.randint(3, 9)))}
        if generated:
            rec["student_response"] = " ".join(rng.choices(words, k=rng.randint(4, 10)))
            rec["source_chosen"] = " ".join(src_rng.choices(words, k=src_rng.randint(4, 10)))  # WRPO's y_ws
        rows.append(json.dumps(rec))
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="session")
def distill_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    return {"teacher": make_tiny_model(root / "teacher", "llama", layers=4, seed=0),
            "ref": make_tiny_model(root / "ref", "llama", layers=4, seed=2),
            "student": make_tiny_model(root / "student", "llama", layers=2, seed=1)}


@pytest.fixture()
def pairs(tmp_path) -> Path:
    return make_pairs(tmp_path / "pairs.jsonl", generated=True)
