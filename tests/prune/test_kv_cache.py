"""KV-cache generation of physically pruned checkpoints (spec prune.md §8.3).

A removed attention block writes no cache entry, while transformers reads the past length from cache
layer 0 and sizes masks from the first full-attention cache layer. Generation with the cache must
equal greedy generation by full re-forward without any cache, computed on the independent reference
(the dense model masked in memory), for: (a) attention of layer 0 removed, (b) all attention blocks
but one removed, (c) a whole layer removed, (d) a middle attention removed, (e) a mix, (f) no attention
left at all, (g) Gemma3 with only its global-attention layer left.
"""

from __future__ import annotations

import pytest
import torch

from compress.model.load import load_model
from compress.prune.export import export_pruned
from tests.fixtures import make_tiny_model
from tests.prune.test_export import masked

LAYERS = 6
CASES = {
    "attn0": [(0, "attn")],
    "one_attn_left": [(i, "attn") for i in range(LAYERS) if i != 3],
    "whole_layer": [(2, "attn"), (2, "mlp")],
    "middle_attn": [(3, "attn")],
    "mixed": [(0, "attn"), (2, "attn"), (2, "mlp"), (4, "mlp"), (5, "attn")],
    "no_attn_left": [(i, "attn") for i in range(LAYERS)],
    "only_global_left": [(i, "attn") for i in range(LAYERS - 1)],  # gemma3: layer 5 is the global one
}
NEW = 6
PROMPT = torch.randint(3, 500, (2, 40), generator=torch.Generator().manual_seed(1))  # 40 > Gemma window 32
PAD = 7  # row 0 is left-padded by PAD tokens in the batched generate


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("kv")
    return {fam: make_tiny_model(root / fam, fam, layers=LAYERS) for fam in ("llama", "gemma3")}


def reforward(model, prompt: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding by running the whole sequence again at every step (no cache at all)."""
    seq = prompt
    with torch.no_grad():
        for _ in range(n):
            nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    return seq[:, prompt.shape[1]:]


def cached_loop(model, prompt: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding feeding one token at a time with the cache; no position ids passed."""
    out_tokens = []
    with torch.no_grad():
        out = model(prompt, use_cache=True)
        cache = out.cache
        for _ in range(n):
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            out_tokens.append(nxt)
            out = model(nxt, cache=cache, use_cache=True)
    return torch.cat(out_tokens, 1)


def batched_generate(model, n: int) -> torch.Tensor:
    ids = PROMPT.clone()
    mask = torch.ones_like(ids)
    ids[0, :PAD] = 0
    mask[0, :PAD] = 0
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=0)
    return out[:, ids.shape[1]:]


def expected(src, removed) -> tuple[torch.Tensor, torch.Tensor]:
    ref = masked(src, removed)
    return reforward(ref, PROMPT[:1, PAD:], NEW)[0], reforward(ref, PROMPT[1:], NEW)[0]


@pytest.mark.parametrize(("family", "case"), [("llama", c) for c in CASES if c != "only_global_left"] + [
    ("gemma3", c) for c in ("attn0", "one_attn_left", "only_global_left", "mixed")])  # gemma3: window 32 < 40
def test_cached_generation_equals_reforward(sources, tmp_path, family, case):
    removed = CASES[case]
    src = sources[family]
    out = export_pruned(src, tmp_path / "out", removed)
    model = load_model(out, dtype="fp32")
    row0, row1 = expected(src, removed)
    # generate(): batch of two, row 0 left-padded
    gen = batched_generate(model, NEW)
    assert torch.equal(gen[0], row0) and torch.equal(gen[1], row1), (case, gen, row0, row1)
    # a hand-written decoding loop over the cache, without position ids
    assert torch.equal(cached_loop(model, PROMPT[1:], NEW)[0], row1)
    # a static (preallocated) cache
    with torch.no_grad():
        static = model.generate(PROMPT[1:], max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                                cache_implementation="static")
    assert torch.equal(static[0, PROMPT.shape[1]:], row1)


@pytest.mark.parametrize("case", ["attn0", "one_attn_left"])
def test_remote_code_cached_generation(sources, tmp_path, case):
    from transformers import AutoModelForCausalLM

    removed = CASES[case]
    out = export_pruned(sources["llama"], tmp_path / "out", removed)
    model = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True, dtype=torch.float32).eval()
    row0, row1 = expected(sources["llama"], removed)
    gen = batched_generate(model, NEW)
    assert torch.equal(gen[0], row0) and torch.equal(gen[1], row1)
    assert torch.equal(cached_loop(model, PROMPT[1:], NEW)[0], row1)


def test_cache_slots_stay_indexed_by_layer(sources, tmp_path):
    from transformers.cache_utils import DummyLayer

    out = export_pruned(sources["llama"], tmp_path / "out", CASES["mixed"])  # layer 2 deleted -> 5 layers
    model = load_model(out, dtype="fp32")
    with torch.no_grad():
        cache = model(PROMPT[1:], use_cache=True).cache
    kinds = [isinstance(layer, DummyLayer) for layer in cache.layers]
    assert kinds == [True, False, False, False, True]  # attention pruned in new layers 0 and 4 (old 0 and 5)
    assert [cache.layers[i].get_seq_length() for i in (1, 2, 3)] == [40, 40, 40]
    assert cache.get_seq_length() == 40


@pytest.mark.parametrize(("family", "case"), [("llama", c) for c in ("attn0", "mixed", "no_attn_left")] + [
    ("gemma3", c) for c in ("attn0", "only_global_left")])
def test_in_memory_masked_model_generates_with_cache(sources, family, case):
    """compress.prune.mask alone (no export, no loader hook): RemovedAttention turns its own cache slot
    into a DummyLayer, so the masked model decodes with a cache as by full re-forward."""
    model = masked(sources[family], CASES[case])
    row0, row1 = expected(sources[family], CASES[case])
    gen = batched_generate(model, NEW)
    assert torch.equal(gen[0], row0) and torch.equal(gen[1], row1)
    assert torch.equal(cached_loop(model, PROMPT[1:], NEW)[0], row1)


class _ZeroAttention(torch.nn.Module):
    """A removed attention without the cache fix: returns zeros, leaves its cache slot empty."""

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


def test_the_hazard_is_real_without_the_fix(sources):
    """Control: a masked model whose removed attention 0 leaves its cache slot empty decodes wrongly,
    so the tests above can fail."""
    ref = masked(sources["llama"], CASES["attn0"])
    ref.model.layers[0].self_attn = _ZeroAttention()
    assert not torch.equal(cached_loop(ref, PROMPT[1:], NEW)[0], reforward(ref, PROMPT[1:], NEW)[0])
