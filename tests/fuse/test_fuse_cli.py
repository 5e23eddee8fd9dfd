"""`compress fuse generate`: answers written as produced, resumed after a crash, one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest

from compress.cli import main


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_greedy_prompt_prints_the_answer(tiny_pair_paths, capsys):
    code, out, err = run(["fuse", "generate", "--method", "greedy", str(tiny_pair_paths["bpe"]), "--prompt", "The city",
                          "--max-new-tokens", "8", "--json"], capsys)
    assert code == 0, err
    rec = json.loads(out)["answers"][0]
    assert rec["tokens"] == {"llama-bpe": 8} and rec["finish_reason"] == "length" and "trace" not in rec


def test_cool_fusion_file_with_trace_and_resume(tiny_pair_paths, tmp_path, capsys):
    data = tmp_path / "prompts.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "prompt": "The history of the city"},
        {"id": "b", "messages": [{"role": "user", "content": "Tell me about the war"}]},
        {"id": "c", "prompt": "In the north"}]) + "\n")
    out = tmp_path / "answers.jsonl"
    argv = ["fuse", "generate", "--method", "cool-fusion", str(tiny_pair_paths["bpe"]), str(tiny_pair_paths["sp"]),
            "--data", str(data), "-o", str(out), "--max-new-tokens", "12", "--max-segment-tokens", "6", "--trace",
            "--rerank", "--stop", "\n\n"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    recs = lines(out)
    header = recs[0]["compress_fuse_generate"]
    assert header["options"]["method"] == "cool-fusion" and len(header["fingerprint"]) == 64
    assert [r["id"] for r in recs[1:]] == ["a", "b", "c"]
    for r in recs[1:]:
        assert r["fused"] == "".join(s["text"] for s in r["trace"])
        assert r["answer"] == r["rerank"]["text"] and set(r["singles"]) == {"llama-bpe", "gemma3-sp"}
        assert all("candidates" in s for s in r["trace"])
    # a crash after the first answer, halfway through writing the second
    text = out.read_text().splitlines(keepends=True)
    out.write_text(text[0] + text[1] + text[2][: len(text[2]) // 2])
    code, _, err = run(argv, capsys)
    assert code == 0, err
    again = lines(out)
    assert again[1] == recs[1] and [r["id"] for r in again[1:]] == ["a", "b", "c"]
    assert [r["answer"] for r in again[2:]] == [r["answer"] for r in recs[2:]]  # greedy: the same answers
    # other options: refused, the file is left alone
    before = out.read_bytes()
    code, _, err = run([*argv[:-2], "--max-new-tokens", "13"], capsys)
    assert code == 1 and "other options" in err and "max_new_tokens" in err and out.read_bytes() == before


@pytest.fixture
def no_template_model(tiny_pair_paths, tmp_path):
    dst = tmp_path / "plain"
    shutil.copytree(tiny_pair_paths["sp"], dst)
    (dst / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    return dst


@pytest.fixture
def no_tokenizer_model(tiny_pair_paths, tmp_path):
    dst = tmp_path / "notok"
    shutil.copytree(tiny_pair_paths["bpe"], dst)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        (dst / f).unlink(missing_ok=True)
    return dst


def test_bad_input_is_one_error_line(tiny_pair_paths, no_template_model, no_tokenizer_model, tmp_path, capsys):
    bpe = str(tiny_pair_paths["bpe"])
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    cases = [
        (["--prompt", "hi"], "no model given"),
        ([str(no_tokenizer_model), "--prompt", "hi"], "tokenizer"),
        ([bpe, str(no_template_model), "--data", str(chat), "-o", str(tmp_path / "a.jsonl")], "no chat template"),
        ([bpe, "--prompt", "the " * 600], "longer than its context"),
        ([bpe, "--data", str(empty), "-o", str(tmp_path / "b.jsonl")], "holds no prompt"),
        ([bpe, "--prompt", "hi", "--max-new-tokens", "0"], "max-new-tokens"),
        (["--method", "greedy", bpe, bpe, "--prompt", "hi"], "one model"),
        ([bpe], "--prompt TEXT or --data"),
    ]
    for args, message in cases:
        code, _, err = run(["fuse", "generate", *args], capsys)
        assert code == 1 and message in err and "Traceback" not in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "a.jsonl").exists() and not (tmp_path / "b.jsonl").exists()
    # plain text with a model without a chat template: that model gets the plain prompt
    code, out, err = run(["fuse", "generate", bpe, str(no_template_model), "--prompt", "hi", "--max-new-tokens", "4",
                          "--json"], capsys)
    assert code == 0, err


def test_existing_files_follow_the_output_policy(tiny_pair_paths, tmp_path, capsys):
    out = tmp_path / "answers.jsonl"
    out.write_text('{"something": 1}\n')
    argv = ["fuse", "generate", "--method", "greedy", str(tiny_pair_paths["bpe"]), "--prompt", "hi",
            "--max-new-tokens", "4", "-o", str(out)]
    for extra in ([], ["--force"]):  # a file this command did not write is never replaced
        code, _, err = run([*argv, *extra], capsys)
        assert code == 1 and "not written by this command" in err and out.read_text() == '{"something": 1}\n'
    out.unlink()
    assert run(argv, capsys)[0] == 0 and len(lines(out)) == 2
    assert run(argv, capsys)[0] == 0 and len(lines(out)) == 2  # resumed: nothing left to answer
    code, _, err = run([*argv[:-4], "--max-new-tokens", "5", "-o", str(out), "--force"], capsys)
    assert code == 0 and lines(out)[1]["tokens"] == {"llama-bpe": 5}
    code, _, err = run([*argv[:-2], "-o", str(tiny_pair_paths["bpe"] / "x.jsonl")], capsys)
    assert code == 1 and "inside the input" in err


def test_answered_indices_counts_complete_lines_only(tmp_path):
    from compress.fuse.generate import answered_indices, open_answers

    out = tmp_path / "answers.jsonl"
    assert answered_indices(out) == set()
    open_answers(out, {"k": 1})
    with open(out, "a", encoding="utf-8") as f:
        f.write('{"index": 3, "answer": "a"}\n{"index": 7, "answer": "b"}\n{"index": 9, "ans')  # killed mid-line
    assert answered_indices(out) == {3, 7}
