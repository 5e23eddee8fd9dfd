"""Fixtures of the eval tests: the local task data folder."""

from __future__ import annotations

import json

import pytest

from tests.eval.reference import HELLASWAG_ROWS


@pytest.fixture(scope="session")
def local_data(shared_data, tmp_path_factory):
    """shared/data plus a hand-written HellaSwag file and a GSM8K few-shot (train) file."""
    root = tmp_path_factory.mktemp("evaldata")
    for sub in ("piqa", "winogrande", "arc", "boolq", "openbookqa"):
        (root / sub).symlink_to(shared_data / sub)
    (root / "hellaswag").mkdir()
    (root / "hellaswag" / "hellaswag_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in HELLASWAG_ROWS))
    (root / "gsm8k").mkdir()
    test_rows = (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()
    (root / "gsm8k" / "test.jsonl").write_text("\n".join(test_rows) + "\n")
    (root / "gsm8k" / "train.jsonl").write_text("\n".join(test_rows[-20:]) + "\n")  # = reference.hub_format's train
    return root
