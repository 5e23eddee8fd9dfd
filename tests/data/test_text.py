"""Text files -> documents -> one token stream -> windows, as the WikiText-2 protocol says."""

from __future__ import annotations

import json

import pytest
import torch

from compress.data import (
    generate_windows,
    load_windows,
    pack_windows,
    read_documents,
    sample_windows,
    tokenize_stream,
)
from compress.data.text import describe_format, resolve_format
from compress.errors import CompressError
from tests.fixtures import tiny_tokenizer


def test_txt_file_is_read_as_written(tmp_path):
    tok = tiny_tokenizer()
    f = tmp_path / "prose.txt"
    text = "First paragraph, one line.\nA second line.\n\n  Indented, after a blank line.\r\nCRLF kept.\n"
    f.write_bytes(text.encode("utf-8"))
    assert read_documents(f) == [text]
    stream = tok(text)["input_ids"]  # the file's contents, tokenized as they are
    w = load_windows(f, tok, seq_len=8)
    assert w.flatten().tolist() == stream[: len(stream) // 8 * 8]
    assert tokenize_stream(tok, read_documents(f)).tolist() == stream


def hf_wikitext_rows(path) -> list[str]:
    """The rows of HF `load_dataset("wikitext", ...)`, built as its loader builds them: the file read
    line by line in text mode, a line kept with its newline when it has text, else ""."""
    with open(path, encoding="utf-8") as fh:
        return [row if row.strip() else "" for row in fh]


def test_wikitext_rows_equal_the_hf_rows(wiki_test):
    rows = read_documents(wiki_test)  # chosen by the file name
    assert rows == hf_wikitext_rows(wiki_test)
    # The HF dataset card of wikitext-2-raw-v1: test split 4358 rows, num_bytes 1305088 (the text's
    # UTF-8 bytes plus a 4-byte offset per row): the rows carry their "\n", blank rows are "".
    assert len(rows) == 4358
    assert sum(len(r.encode("utf-8")) for r in rows) + 4 * len(rows) == 1305088
    assert rows[:3] == ["", " = Robert Boulter = \n", ""]


def test_format_option_and_auto_names(wiki_test, tmp_path):
    tok = tiny_tokenizer()
    other = tmp_path / "wikitext-test.txt"
    other.write_bytes(wiki_test.read_bytes())
    assert resolve_format(other) == "text" and read_documents(other) == [wiki_test.read_text()]
    assert read_documents(other, format="wikitext") == hf_wikitext_rows(wiki_test)
    assert read_documents(wiki_test, format="text") == [wiki_test.read_text()]
    for name in ("wiki.valid.raw", "wiki.train.tokens"):
        assert resolve_format(tmp_path / name) == "wikitext"
    assert resolve_format(tmp_path / "a.jsonl") == resolve_format(tmp_path / "a.json") == "records"
    assert describe_format(wiki_test) == "wikitext-2 rows joined with \\n\\n"
    assert describe_format(other) == "the file as written"
    small = tmp_path / "wiki.test.raw"
    small.write_text(" \n = T = \n \n Body one .\n Body two .\n \n")
    rows = ["", " = T = \n", "", " Body one .\n", " Body two .\n", ""]
    assert read_documents(small) == rows
    assert tokenize_stream(tok, read_documents(small)).tolist() == tok("\n\n".join(rows))["input_ids"]
    with pytest.raises(CompressError, match="unknown --format 'markdown'"):
        read_documents(small, format="markdown")
    with pytest.raises(CompressError, match="--field text names JSON fields"):
        read_documents(small, field="text")


def test_jsonl_fields(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [{"instruction": "Q1", "output": "A1"}, {"instruction": "Q2", "output": "A2"}]))
    assert read_documents(f, "instruction,output") == ["Q1\n\nA1", "Q2\n\nA2"]
    with pytest.raises(CompressError, match="no field 'text'"):
        read_documents(f)


def test_json_list_and_alpaca(shared_data):
    docs = read_documents(shared_data / "alpaca_eval" / "model_outputs.json", "instruction,output")
    assert len(docs) == 805 and "\n\n" in docs[0]


def test_chat_messages_rendered_with_template(tmp_path):
    tok = tiny_tokenizer()
    f = tmp_path / "chat.jsonl"
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    f.write_text(json.dumps({"messages": msgs}) + "\n")
    (doc,) = read_documents(f, tokenizer=tok)
    assert doc == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"


def test_malformed_line_number(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "ok"}\n{"text": broken}\n')
    with pytest.raises(CompressError, match="line 2"):
        read_documents(f)


def test_empty_and_missing(tmp_path):
    (tmp_path / "e.txt").write_text("\n \n")
    with pytest.raises(CompressError, match="no text"):
        read_documents(tmp_path / "e.txt")
    with pytest.raises(CompressError, match="not found"):
        read_documents(tmp_path / "missing.txt")


def test_windows_are_slices_of_the_stream(tmp_path):
    tok = tiny_tokenizer()
    f = tmp_path / "a.jsonl"
    f.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["The quick brown fox.", "Jumps over the lazy dog."] * 20))
    stream = tok("The quick brown fox.\n\nJumps over the lazy dog.\n\n" * 19 + "The quick brown fox.\n\nJumps over the lazy dog.")["input_ids"]
    w = load_windows(f, tok, seq_len=16)
    n = len(stream) // 16
    assert w.shape == (n, 16)
    assert w.flatten().tolist() == stream[: n * 16]


def test_pack_too_short():
    with pytest.raises(CompressError, match="fewer than one window"):
        pack_windows(torch.arange(5), 8)


def test_sampling_is_seeded():
    w = torch.arange(100).view(20, 5)
    a, b, c = sample_windows(w, 5, 1), sample_windows(w, 5, 1), sample_windows(w, 5, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({tuple(r) for r in a.tolist()}) == 5
    assert sample_windows(w, None, 0).shape[0] == 20


def test_tokenize_stream_joins_rows():
    tok = tiny_tokenizer()
    assert tokenize_stream(tok, ["a", "b"]).tolist() == tok("a\n\nb")["input_ids"]


def test_generated_calibration_is_seeded(tiny_llama):
    import compress

    model, tok = compress.load(tiny_llama)
    a = generate_windows(model, tok, samples=3, seq_len=12, seed=5, batch_size=2)
    b = generate_windows(model, tok, samples=3, seq_len=12, seed=5, batch_size=2)
    c = generate_windows(model, tok, samples=3, seq_len=12, seed=6, batch_size=2)
    assert a.shape == (3, 12) and torch.equal(a, b) and not torch.equal(a, c)
    assert (a[:, 0] == tok.bos_token_id).all()
    assert not (a[:, 1:] == tok.eos_token_id).any()
