"""Representations, fused targets and `fuse train` / `fuse run` on tiny models with real tokenizers
(byte-level BPE pivot, SentencePiece-style source)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compress.errors import CompressError
from compress.fuse.fusion import Candidate, FusedTargets, avgce_weights, mince_choice
from tests.fixtures import make_tiny_model

RECORDS = [
    {"question": "What is 2 + 3?", "answer": "2 + 3 = 5.\n#### 5"},
    {"prompt": "Name a colour.", "response": "Blue, like the sky — café au lait is brown."},
    {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi there!"}]},
    {"text": "The cat sat on the mat. 日本語 text ends here."},
    {"instruction": "Add.", "input": "4 and 4", "output": "8"},
    {"question": "Is 7 prime?", "answer": "Yes: 7 has no divisor but 1 and 7.\n#### yes"},
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from compress.fuse.aligned import align
    from compress.fuse.represent import RepSettings, represent

    root = tmp_path_factory.mktemp("fuse-explicit")
    pivot = make_tiny_model(root / "pivot", "llama", tokenizer="bpe", seed=3)
    source = make_tiny_model(root / "source", "gemma3", tokenizer="sp", seed=4)
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    st = RepSettings(k=4, max_length=96, batch_size=3)
    represent(pivot, data, root / "rep-pivot", st)
    represent(source, data, root / "rep-source", st)
    align(root / "rep-pivot", root / "rep-source", root / "aligned", "mined")
    align(root / "rep-pivot", root / "rep-pivot", root / "aligned-self", "exact")
    return {"root": root, "pivot": pivot, "source": source, "data": data, "st": st}


def test_representation_matches_full_logits(world):
    """Top-k, rest and label log-probs against the model's full softmax computed here."""
    from compress.fuse.records import Renderer, read_records
    from compress.fuse.represent import read_rep
    from compress.model.load import load

    model, tok = load(world["source"])
    rep = read_rep(world["root"] / "rep-source")
    rec = read_records(world["data"])[1]
    item = Renderer(tok).render(rec)
    ids = torch.tensor([item.prompt + item.labels])
    with torch.no_grad():
        logp = model(ids).logits[0].float().log_softmax(-1)
    n0 = len(item.prompt)
    lp = logp[n0 - 1: n0 - 1 + len(item.labels)]
    sl = rep.span(1)
    assert rep.tok["labels"][sl].tolist() == item.labels
    top = lp.topk(4, -1)
    assert torch.equal(rep.tok["ids"][sl].long(), top.indices)
    torch.testing.assert_close(rep.tok["logprobs"][sl], top.values, atol=1e-4, rtol=0)
    rest = torch.log1p(-top.values.exp().sum(-1))
    torch.testing.assert_close(rep.tok["rest_logprob"][sl], rest, atol=1e-3, rtol=0)
    lab = lp.gather(-1, torch.tensor(item.labels)[:, None])[:, 0]
    torch.testing.assert_close(rep.tok["label_logprob"][sl], lab, atol=1e-4, rtol=0)
    assert float(rep.seq["ce_token"][1]) == pytest.approx(float(-lab.mean()), abs=1e-4)
    inside = torch.tensor(item.starts) >= 0
    nbytes = int((torch.tensor(item.ends) - torch.tensor(item.starts))[inside].sum())
    assert nbytes == len(rec.response.encode())
    assert float(rep.seq["ce_byte"][1]) == pytest.approx(float(-lab[inside].sum() / nbytes), abs=1e-4)


def test_represent_resumes_from_finished_shards(world, tmp_path, monkeypatch):
    import compress.fuse.represent as R

    monkeypatch.setattr(R, "RECORDS_PER_SHARD", 2)
    out = tmp_path / "rep"
    calls = []
    real = R.shard_tensors

    def stop_after_one(*a, **kw):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(R, "shard_tensors", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        R.represent(world["pivot"], world["data"], out, world["st"])
    assert not out.exists() and (tmp_path / "rep.partial" / "shard-00000.safetensors").is_file()
    monkeypatch.setattr(R, "shard_tensors", lambda *a, **kw: (calls.append(2), real(*a, **kw))[1])
    R.represent(world["pivot"], world["data"], out, world["st"])
    assert calls.count(2) == 2  # shards 1 and 2 only
    full = R.read_rep(world["root"] / "rep-pivot")
    again = R.read_rep(out)
    assert torch.equal(full.tok["ids"], again.tok["ids"]) and torch.equal(full.offsets, again.offsets)
    assert not (tmp_path / "rep.partial").exists()


def test_head_never_holds_more_than_the_logit_budget(world, monkeypatch):
    """Peak-memory guard: the LM head runs on row chunks, never on a whole record's length × vocabulary."""
    import compress.fuse.represent as R
    import compress.model.logits as ML

    monkeypatch.setattr(R, "LOGIT_BUDGET", 600 * 20)  # 20 rows of a ~600-token vocabulary
    seen = []
    real = ML.head_logits
    monkeypatch.setattr(ML, "head_logits", lambda m, h: (seen.append(h.shape[0]), real(m, h))[1])
    from compress.model.load import load

    model, _ = load(world["pivot"])
    hidden = torch.randn(97, model.config.hidden_size)
    out = R.token_stats(model, hidden, torch.zeros(97, dtype=torch.long), 4)
    assert out["ids"].shape == (97, 4) and max(seen) <= 600 * 20 // model.config.vocab_size + 16


def test_mince_avgce_formulas():
    ce = torch.tensor([[2.0, 1.0, 3.0], [0.5, 0.5, 0.7]])
    assert mince_choice(ce).tolist() == [1, 0]  # ties: the first (the pivot)
    w = avgce_weights(ce)
    ref = torch.exp(-ce) / torch.exp(-ce).sum(-1, keepdim=True)
    torch.testing.assert_close(w, ref)
    # two candidates over one record of two labels, dense vocabulary of 5 for the reference
    a = Candidate("a", torch.tensor([[0, 1], [2, 3]]), torch.log(torch.tensor([[0.6, 0.3], [0.5, 0.5]])),
                  torch.log(torch.tensor([0.1, 1e-9])), torch.tensor([1.0]))
    b = Candidate("b", torch.tensor([[1, 4], [2, 2]]), torch.log(torch.tensor([[0.7, 0.2], [1.0, 1e-12]])),
                  torch.log(torch.tensor([0.1, 1e-9])), torch.tensor([0.2]))
    off = torch.tensor([0, 2])
    t = FusedTargets([a, b], off, "min-ce")
    ids, lp, _ = t.record(0)
    assert torch.equal(ids, b.ids)
    t = FusedTargets([a, b], off, "avg-ce")
    ids, lp, rest = t.record(0)
    wa, wb = avgce_weights(torch.tensor([[1.0, 0.2]]))[0].tolist()

    def dense(c):
        d = torch.zeros(2, 5)
        d.scatter_add_(1, c.ids, c.logprobs.exp())
        return d

    want = wa * dense(a) + wb * dense(b)
    got = torch.zeros(2, 5).scatter_add_(1, ids, lp.exp())
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(rest.exp(), wa * a.rest.exp() + wb * b.rest.exp())


def test_unaligned_rows_are_onehot_on_the_next_token(world):
    from compress.fuse.aligned import read_aligned
    from compress.fuse.represent import read_rep

    _, t = read_aligned(world["root"] / "aligned")
    rep = read_rep(world["root"] / "rep-pivot")
    off = ~t["from_source"]
    assert off.any() and t["from_source"].any()
    # the fallback puts all mass on the label of the row (the pivot's next token), not on its input token
    assert torch.equal(t["ids"][off, 0].long(), rep.tok["labels"][off].long())
    assert torch.all(t["logprobs"][off, 0] == 0) and torch.isinf(t["logprobs"][off, 1:]).all()
    # rows from the source are distributions: slots + rest sum to one
    on = t["from_source"]
    tot = torch.logsumexp(torch.cat([t["logprobs"][on], t["rest_logprob"][on, None]], -1), -1)
    torch.testing.assert_close(tot, torch.zeros_like(tot), atol=1e-4, rtol=0)


def _history(folder: Path) -> list[dict]:
    return json.loads((folder / "compress.json").read_text())["history"]


def test_lambda_one_is_plain_ce_and_kl_zero_for_the_target_itself(world, tmp_path):
    from compress.fuse.train import fuse_train
    from compress.model.load import load

    w = world
    common = {"pivot_rep": str(w["root"] / "rep-pivot"), "max_steps": 1, "batch_size": 8, "lr": 1e-3, "seed": 1}
    fuse_train(w["pivot"], w["data"], tmp_path / "a", sources=[str(w["root"] / "aligned")], lam=1.0, **common)
    fuse_train(w["pivot"], w["data"], tmp_path / "b", sources=[str(w["root"] / "aligned-self")], lam=1.0, **common)
    # λ = 1: the loss is the CE of the gold response tokens, whatever the fused targets
    model, tok = load(w["pivot"])
    from compress.fuse.records import Renderer, read_records

    r = Renderer(tok)
    nll, n = 0.0, 0
    with torch.no_grad():
        for rec in read_records(w["data"]):
            it = r.render(rec)
            logp = model(torch.tensor([it.prompt + it.labels])).logits[0].log_softmax(-1)
            n0 = len(it.prompt)
            nll -= float(logp[n0 - 1: n0 - 1 + len(it.labels)].gather(-1, torch.tensor(it.labels)[:, None]).sum())
            n += len(it.labels)
    assert _history(tmp_path / "a")[0]["loss"] == pytest.approx(nll / n, rel=1e-4)
    for name in ("model.safetensors",):
        from safetensors.torch import load_file

        sa, sb = load_file(str(tmp_path / "a" / name)), load_file(str(tmp_path / "b" / name))
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # KL mode, the pivot its own only candidate, λ = 0: the fusion term is 0 at the first step
    res = fuse_train(w["pivot"], w["data"], tmp_path / "c", sources=[], lam=0.0, loss="kl", **common)
    assert abs(_history(tmp_path / "c")[0]["kl"]) < 1e-5 and res["chosen_by_mince"] == {"pivot": len(RECORDS)}


def test_first_step_loss_is_lambda_ce_plus_fusellm_soft_ce(world, tmp_path):
    """λ = 0.4, the source the only candidate: the distill loop's first loss (initial weights, one batch of
    every record) is λ·CE(gold) + (1 − λ)·FuseLLM's soft CE −Σ_j p̃_j log q(id_j), p̃ the aligned source
    row renormalised over its slots, both averaged over the labels, computed here from the model's logits."""
    from compress.fuse.aligned import read_aligned
    from compress.fuse.records import Renderer, read_records
    from compress.fuse.train import fuse_train
    from compress.model.load import load

    w, lam = world, 0.4
    fuse_train(w["pivot"], w["data"], tmp_path / "t", pivot_rep=str(w["root"] / "rep-pivot"),
               sources=[str(w["root"] / "aligned")], with_pivot=False, lam=lam, loss="ce", max_steps=1,
               batch_size=8, lr=1e-3, seed=1)
    t = read_aligned(w["root"] / "aligned")[1]
    model, tok = load(w["pivot"])
    r = Renderer(tok)
    ce, soft, n = 0.0, 0.0, 0
    with torch.no_grad():
        for i, rec in enumerate(read_records(w["data"])):
            it = r.render(rec)
            a, b = int(t["offsets"][i]), int(t["offsets"][i + 1])
            assert it.labels == t["labels"][a:b].tolist()
            logq = model(torch.tensor([it.prompt + it.labels])).logits[0].float().log_softmax(-1)
            logq = logq[len(it.prompt) - 1: len(it.prompt) - 1 + len(it.labels)]
            ce -= float(logq.gather(-1, torch.tensor(it.labels)[:, None]).sum())
            p = t["logprobs"][a:b].float().softmax(-1)
            soft -= float((p * logq.gather(-1, t["ids"][a:b].long())).sum())
            n += len(it.labels)
    assert _history(tmp_path / "t")[0]["loss"] == pytest.approx(lam * ce / n + (1 - lam) * soft / n, rel=1e-4)


def test_bad_inputs_are_one_error(world, tmp_path):
    from compress.cli import main
    from compress.fuse.aligned import align
    from compress.fuse.represent import RepSettings, represent

    w = world
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in [RECORDS[0], RECORDS[2], RECORDS[1]]))
    represent(w["source"], other, tmp_path / "rep-other", w["st"])
    with pytest.raises(CompressError, match="record 1 .*line 2"):
        align(w["root"] / "rep-pivot", tmp_path / "rep-other", tmp_path / "x")
    represent(w["source"], w["data"], tmp_path / "rep-k2", RepSettings(k=2, max_length=96))
    with pytest.raises(CompressError, match="top-4 .* top-2"):
        align(w["root"] / "rep-pivot", tmp_path / "rep-k2", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    code = main(["fuse", "train", str(w["source"]), "--data", str(w["data"]), "--pivot-rep",
                 str(w["root"] / "rep-pivot"), "--source", str(w["root"] / "aligned"), "-o", str(tmp_path / "t")])
    assert code == 1 and not (tmp_path / "t").exists()
    # a source whose model folder lost its tokenizer
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(w["source"], bare)
    represent(bare, w["data"], tmp_path / "rep-bare", w["st"])
    for f in bare.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            f.unlink()
    with pytest.raises(CompressError, match="no tokenizer files"):
        align(w["root"] / "rep-pivot", tmp_path / "rep-bare", tmp_path / "x")
    # every chat prompt longer than --max-length: all records skipped is an error, not a NaN
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps(r) + "\n" for r in RECORDS if "text" not in r))
    represent(w["pivot"], chats, tmp_path / "rep-short", RepSettings(k=4, max_length=3))
    with pytest.raises(CompressError, match="no record has a response token"):
        from compress.fuse.train import fuse_train

        fuse_train(w["pivot"], chats, tmp_path / "t2", pivot_rep=str(tmp_path / "rep-short"), sources=[])


def test_recipe_checks_and_resume(world, tmp_path):
    from compress.fuse.pipeline import run_recipe

    w = world
    bad = tmp_path / "bad.yml"
    bad.write_text(f"stages:\n  - name: a\n    run: fuse represent {w['pivot']} --data {{data}}\n")
    with pytest.raises(CompressError, match=r"stage 'a' names \{data\}"):
        run_recipe(bad, tmp_path / "out")
    bad.write_text(f"stages:\n  - name: a\n    run: fuse represent {w['root']}/missing --data {w['data']}\n")
    with pytest.raises(CompressError, match="does not exist"):
        run_recipe(bad, tmp_path / "out")
    good = tmp_path / "good.yml"
    good.write_text(f"vars: {{data: {w['data']}}}\nstages:\n"
                    f"  - name: rep\n    run: fuse represent {w['pivot']} --data {{data}} --k 4 --max-length 64\n"
                    f"  - name: self\n    run: fuse align {{rep}} {{rep}}\n")
    st = run_recipe(good, tmp_path / "out")
    assert [s["status"] for s in st["stages"]] == ["done", "done"]
    assert st["stages"][1]["provenance"]["file"] == "compress.json"
    again = run_recipe(good, tmp_path / "out")
    assert all(s.get("resumed") for s in again["stages"])
    saved = json.loads((tmp_path / "out" / "pipeline.json").read_text())
    assert saved["final"].endswith("stages/self") and (tmp_path / "out" / "recipe.yml").is_file()
    # the same command on a data file with other contents is not "done before": both stages rerun
    data2 = tmp_path / "data2.jsonl"
    data2.write_text(Path(w["data"]).read_text())
    good.write_text(good.read_text().replace(str(w["data"]), str(data2)))
    run_recipe(good, tmp_path / "out2")
    data2.write_text("".join(Path(w["data"]).read_text().splitlines(keepends=True)[::-1]))
    third = run_recipe(good, tmp_path / "out2")
    assert not any(s.get("resumed") for s in third["stages"])


def test_profuser_choice_schedule_and_report(world, tmp_path):
    from compress.fuse.profuser import Progressive, inference_choice
    from compress.fuse.train import fuse_train

    scores = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.5], [0.2, 0.2]])
    mince = torch.tensor([1, 1, 0, 0])
    assert inference_choice(scores, mince).tolist() == [0, 1, 1, 0]  # ties go to the MinCE choice
    pg = Progressive(10, 0.3)
    assert pg.switch == 3 and pg.weights() == (1.0, 0.0)
    pg.step = 3
    assert pg.weights() == pytest.approx((0.1 / 1.1, 1 / 1.1))
    # stage 1 takes the inference-mode model's rows, stage 2 mixes 0.1·P_infer + P_train
    a = Candidate("a", torch.tensor([[0, 1]]), torch.log(torch.tensor([[0.5, 0.5]])), torch.tensor([-30.0]), torch.tensor([1.0]))
    b = Candidate("b", torch.tensor([[2, 3]]), torch.log(torch.tensor([[0.9, 0.1]])), torch.tensor([-30.0]), torch.tensor([0.5]))
    t = FusedTargets([a, b], torch.tensor([0, 1]), "min-ce", torch.tensor([0]), Progressive(10, 0.5))
    ids, lp, _ = t.record(0)
    assert set(ids[0][lp[0] > -1e9].tolist()) == {0, 1}
    t.progressive.step = 5
    ids, lp, _ = t.record(0)
    got = torch.zeros(4).scatter_add_(0, ids[0], lp[0].exp())
    want = (0.1 * torch.tensor([0.5, 0.5, 0, 0]) + torch.tensor([0, 0, 0.9, 0.1])) / 1.1
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)

    class LongerIsBetter:  # a deterministic judge for the test: the longer answer wins
        name, kind, units = "length", "reward", "characters"

        def check(self, refs):
            pass

        def score(self, prompts, responses, refs):
            return [float(len(r)) for r in responses]

    res = fuse_train(world["pivot"], world["data"], tmp_path / "pf", pivot_rep=str(world["root"] / "rep-pivot"),
                     sources=[str(world["root"] / "aligned")], select="progressive", scorer=LongerIsBetter(),
                     infer_fraction=0.5, gen_tokens=8, max_steps=2, batch_size=3)
    pr = res["profuser"]
    assert pr["records"] == len(RECORDS) and pr["switch_step"] == 1
    assert 0 <= pr["disagree"] <= len(RECORDS)
    assert sum(pr["inference_mode"].values()) == len(RECORDS) == sum(pr["training_mode"].values())


def test_align_cli_json_report(world, tmp_path, capsys):
    from compress.cli import main

    out = tmp_path / "al"
    assert main(["fuse", "align", str(world["root"] / "rep-pivot"), str(world["root"] / "rep-source"), "-o", str(out),
                 "--vocab-map", "ms", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    cov = rep["coverage"]
    assert set(cov) == {"unaligned", "one_to_one", "one_to_many", "many_to_one", "many_to_many", "dtw"}
    assert sum(cov.values()) == pytest.approx(1.0)
    assert sum(rep["topk_mass"].values()) == pytest.approx(1.0)
    assert rep["vocab_map"] == "ms" and (out / "vocab_map.safetensors").is_file()
    # an existing output is never replaced without --force
    assert main(["fuse", "align", str(world["root"] / "rep-pivot"), str(world["root"] / "rep-source"), "-o", str(out)]) == 1
