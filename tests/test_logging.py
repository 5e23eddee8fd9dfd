"""Library messages are `logging` records of the "compress" logger; the CLI renders them on stderr
and keeps stdout for --json."""

from __future__ import annotations

import json
import logging

import pytest

import compress
from compress.cli import main


@pytest.fixture(scope="module")
def small_wiki(wiki_test, tmp_path_factory):
    """The first 300 lines of WikiText-2 test, under WikiText's file name."""
    p = tmp_path_factory.mktemp("wiki") / "wiki.test.raw"
    p.write_text("".join(wiki_test.read_text(encoding="utf-8").splitlines(keepends=True)[:300]), encoding="utf-8")
    return p


def test_library_call_emits_log_records(tiny_llama, small_wiki, caplog, capsys):
    caplog.set_level(logging.INFO, logger="compress")
    compress.evaluate(str(tiny_llama), "ppl", data=small_wiki, seq_len=32, max_windows=1, hash_models=False)
    records = [r for r in caplog.records if r.name == "compress"]
    assert any(r.levelno == logging.INFO and f"loading {tiny_llama}" in r.getMessage() for r in records)
    assert any("perplexity on" in r.getMessage() for r in records)


def test_cli_prints_messages_on_stderr_and_json_on_stdout(tiny_llama, small_wiki, capsys):
    assert main(["eval", str(tiny_llama), "--tasks", "ppl", "--data", str(small_wiki), "--seq-len", "32",
                 "--max-windows", "1", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.splitlines()[0])["tasks"]["ppl"]["text_format"] == "wikitext-2 rows joined with \\n\\n"
    assert f"loading {tiny_llama}" in err and "loading" not in out.splitlines()[0]


def test_cli_renders_warnings(tiny_llama, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="compress")
    assert main(["prune", str(tiny_llama), "-o", str(tmp_path / "out"), "--blocks", "1", "--samples", "2",
                 "--seq-len", "16", "--json"]) == 0
    out, err = capsys.readouterr()
    json.loads(out)
    assert "warning: only 30 calibration tokens" in err
    assert any(r.levelno == logging.WARNING and "calibration tokens" in r.getMessage() for r in caplog.records)
