"""The fused decoder as an lm-eval model: lm-eval's gsm8k requests answered by Cool-Fusion."""

from __future__ import annotations

import pytest

from compress.errors import CompressError
from compress.fuse.cool_fusion import CoolFusionDecoder
from compress.fuse.lm_eval_model import FusedLM


def _evaluate(lm, task, shared_data, **kw):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from compress.eval.tasks import resolve_task_data, task_config

    cfg = task_config(resolve_task_data(task, [shared_data], None))
    return lm_eval.simple_evaluate(model=lm, tasks=[cfg], task_manager=TaskManager(include_defaults=False),
                                   log_samples=True, **kw)


def test_gsm8k_requests_are_answered_by_the_decoder(tiny_bpe, tiny_sp, shared_data):
    dec = CoolFusionDecoder([tiny_bpe, tiny_sp], names=["bpe", "sp"])
    lm = FusedLM(dec, rerank=True)
    out = _evaluate(lm, "gsm8k", shared_data, limit=2, num_fewshot=1, gen_kwargs={"max_gen_toks": 12})
    samples = out["samples"]["gsm8k"]
    assert len(samples) == 4 and len(lm.records) == 2  # two filters per document, one decoding each
    assert "exact_match,strict-match" in out["results"]["gsm8k"]
    for s in samples[:2]:
        context, kwargs = s["arguments"][0]
        assert "Question:" in kwargs["until"]
        ref = CoolFusionDecoder([tiny_bpe, tiny_sp], names=["bpe", "sp"], rerank=True).generate(
            context, stop=kwargs["until"], max_new_tokens=12)
        assert s["resps"][0][0] == ref["rerank"]["text"]
    assert all(set(r["wins"]) == {"bpe", "sp"} and "rerank_chosen" in r for r in lm.records)


def test_loglikelihood_tasks_are_refused(tiny_bpe, tiny_sp, shared_data):
    lm = FusedLM(CoolFusionDecoder([tiny_bpe, tiny_sp], names=["bpe", "sp"]))
    with pytest.raises(CompressError, match="generation tasks only"):
        _evaluate(lm, "arc_easy", shared_data, limit=1)


def test_chat_history_reaches_each_models_template(tiny_bpe, tiny_sp):
    dec = CoolFusionDecoder([tiny_bpe, tiny_sp], names=["bpe", "sp"], max_new_tokens=6)
    lm = FusedLM(dec)
    history = [{"role": "user", "content": "The history of the city"}]

    class Req:
        args = (lm.apply_chat_template(history), {"until": ["\n\n"], "max_gen_toks": 6})

    assert lm.generate_until([Req()]) == [dec.generate(history, stop=["\n\n"])["text"]]
