"""Preference jsonl reading: formats, chat rendering, response masks, truncation and bad input."""

from __future__ import annotations

import json

import pytest

from compress.data.preference import collate_slot, hh_to_messages, read_preference
from compress.errors import CompressError
from tests.fixtures import tiny_tokenizer


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_string_and_message_forms_render_with_template(tmp_path, tok):
    f = _write(tmp_path / "p.jsonl", [
        {"prompt": "Hi there", "chosen": "Hello!", "rejected": "Go away."},
        {"prompt": [{"role": "user", "content": "Hi there"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "assistant", "content": "Go away."}]},
        {"chosen": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Go away."}]},
    ])
    d = read_preference(f, tok, max_length=256)
    assert len(d.examples) == 3
    a, b, c = d.examples
    assert a.prompt == b.prompt == c.prompt and a.responses == b.responses == c.responses
    full = tok.apply_chat_template([{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}],
                                   tokenize=False)
    assert tok.decode(a.prompt + a.responses["chosen"]) == full
    assert tok.decode(a.responses["chosen"]) == "Hello!<|im_end|>\n"
    batch = collate_slot(d.examples, "rejected", tok.pad_token_id)
    assert batch.targets.tolist() == sum((e.responses["rejected"] for e in d.examples), [])
    assert (batch.response_mask.sum(1) == batch.lengths).all()


def test_hh_dialogues_split_at_last_assistant(tmp_path, tok, shared_data):
    src = shared_data / "hh-rlhf" / "harmless-base" / "test.jsonl"
    rec = json.loads(src.read_text().splitlines()[0])
    cut = rec["chosen"].rindex("\n\nAssistant:")
    msgs = hh_to_messages(rec["chosen"][:cut])
    assert msgs[0]["role"] == "user" and msgs[-1]["role"] == "user"
    assert all(m["role"] != n["role"] for m, n in zip(msgs, msgs[1:], strict=False))
    d = read_preference(src, tok, max_length=4096, limit=5)
    ex = d.examples[0]
    assert tok.decode(ex.responses["chosen"]).startswith(rec["chosen"][cut + len("\n\nAssistant:"):].strip()[:20])
    assert ex.prompt_text.endswith("<|im_start|>assistant\n")


def test_truncation_and_long_prompt_policies(tmp_path, tok):
    long = " ".join(["word"] * 200)
    f = _write(tmp_path / "p.jsonl", [
        {"prompt": "short", "chosen": long, "rejected": "no"},
        {"prompt": long, "chosen": "a", "rejected": "b"},
    ])
    d = read_preference(f, tok, max_length=64)
    assert len(d.examples) == 1 and d.skipped_long == 1
    ex = d.examples[0]
    assert len(ex.prompt) + len(ex.responses["chosen"]) == 64
    with pytest.raises(CompressError, match="line 2: the prompt has"):
        read_preference(f, tok, max_length=64, long_prompt="error")
    t = read_preference(f, tok, max_length=64, max_prompt_length=32, long_prompt="truncate")
    assert len(t.examples) == 2 and len(t.examples[1].prompt) == 32


def test_bad_input(tmp_path, tok):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(CompressError, match="empty"):
        read_preference(empty, tok)
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}, "{not json"])
    with pytest.raises(CompressError, match="line 2 is not valid JSON"):
        read_preference(bad, tok)
    missing = _write(tmp_path / "m.jsonl", [{"prompt": "a", "rejected": "b"}])
    with pytest.raises(CompressError, match="line 1: no field 'chosen'"):
        read_preference(missing, tok)
    no_prompt = _write(tmp_path / "n.jsonl", [{"chosen": "\n\nHuman: a\n\nAssistant: b"}])
    with pytest.raises(CompressError, match="line 1: no field 'rejected'"):
        read_preference(no_prompt, tok)
    with pytest.raises(CompressError, match="not found"):
        read_preference(tmp_path / "nope.jsonl", tok)
    all_long = _write(tmp_path / "l.jsonl", [{"prompt": "x " * 100, "chosen": "b", "rejected": "c"}])
    with pytest.raises(CompressError, match="longer than"):
        read_preference(all_long, tok, max_length=16)


def test_sft_records_without_rejected(tmp_path, tok):
    """`prompt` + `chosen` alone (the SFT sets of `compress fuse data`): a chosen slot and no rejected one."""
    d = read_preference(_write(tmp_path / "s.jsonl", [{"prompt": "a b", "chosen": "c d", "source": "gemma3"}]), tok)
    assert d.has("chosen") and not d.has("rejected")
    assert tok.decode(d.examples[0].responses["chosen"]).startswith("c d")


def test_fingerprint_changes_with_data_and_length(tmp_path, tok):
    f = _write(tmp_path / "p.jsonl", [{"prompt": "a b c", "chosen": "d e f g h", "rejected": "i"}])
    g = _write(tmp_path / "q.jsonl", [{"prompt": "a b c", "chosen": "d e f g x", "rejected": "i"}])
    d = read_preference(f, tok, max_length=64)
    base = d.fingerprint()
    short = len(d.examples[0].prompt) + 2
    assert base == read_preference(f, tok, max_length=64).fingerprint()
    assert base != read_preference(g, tok, max_length=64).fingerprint()
    assert base != read_preference(f, tok, max_length=short).fingerprint()
