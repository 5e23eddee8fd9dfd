"""Packed scoring over a shared cache equals plain forwards; cache cropping and gathering keep exact states."""

from __future__ import annotations

import pytest
import torch

from compress.fuse import kv


@pytest.mark.parametrize("which", ["tiny_bpe", "tiny_sp"])
def test_packed_blocks_match_plain_forwards(which, request):
    model, _ = request.getfixturevalue(which)  # tiny_sp is a Gemma-3 with a 32-token sliding window
    torch.manual_seed(0)
    prefix = torch.randint(10, 300, (60,)).tolist()
    cache = kv.new_cache()
    kv.forward_step(model, cache, prefix)
    blocks, starts = [[prefix[-1], 5, 6, 7], [prefix[-5], 8, 9], [prefix[-1], 11]], [59, 55, 59]
    got = kv.forward_packed(model, cache, blocks, starts)
    o = 0
    for b, s in zip(blocks, starts, strict=True):
        ref = model(input_ids=torch.tensor([prefix[:s] + b])).logits[0, s:].float()
        torch.testing.assert_close(got[o:o + len(b)], ref, atol=1e-4, rtol=1e-4)
        o += len(b)
    # keep the prefix up to 55 and the second block: the cache is then that of prefix[:55] + block
    kv.keep_positions(cache, torch.cat([torch.arange(55), torch.arange(60 + 4, 60 + 7)]))
    assert kv.cache_len(cache) == 58
    nxt = kv.forward_step(model, cache, [3])
    ref = model(input_ids=torch.tensor([prefix[:55] + blocks[1] + [3]])).logits[0, -1].float()
    torch.testing.assert_close(nxt, ref, atol=1e-4, rtol=1e-4)
    kv.crop_to(cache, 40)
    torch.testing.assert_close(kv.forward_step(model, cache, [4]),
                               model(input_ids=torch.tensor([prefix[:40] + [4]])).logits[0, -1].float(),
                               atol=1e-4, rtol=1e-4)


def test_packed_layout():
    pos, allow = kv.packed_layout(3, [2, 1], [2, 2])
    assert pos.tolist() == [2, 3, 1, 2]
    assert allow.int().tolist() == [[1, 1, 0, 1, 0, 0, 0], [1, 1, 0, 1, 1, 0, 0],
                                    [1, 0, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, 1, 1]]
