"""KV-cache operations for decoding with several continuations of one cached prefix.

Candidates are scored *packed*: the blocks of all candidates are concatenated into one row and run in
one forward over the model's cache, each block seeing only its own prefix of the cache and its own
earlier tokens:

    block j, token i (position s_j + i) may attend to
        cache entries 0 .. s_j - 1             (the shared prefix, positions = indices)
        block j's tokens 0 .. i                 (causal inside the block)
    and, in a sliding-window layer of width W, only keys with  pos_q - pos_k < W.

No cache is copied per candidate; afterwards the cache is cut back (`crop_to`) or re-assembled from
the prefix and the winning block (`keep_positions`), so the winner's keys/values are never recomputed.
The cache is a plain `DynamicCache()` (full layers only): sliding windows are applied by the masks, so
cropping and gathering stay exact for sliding-window models (Gemma-2/3) too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def new_cache():
    from transformers import DynamicCache

    return DynamicCache()


def cache_len(cache) -> int:
    return int(cache.get_seq_length())


def crop_to(cache, length: int) -> None:
    """Keep the first `length` positions (`DynamicCache.crop` takes the number of tokens to remove)."""
    extra = cache_len(cache) - length
    if extra > 0:
        cache.crop(-extra)


def keep_positions(cache, index: torch.Tensor) -> None:
    """Keep only the cache positions `index` (in that order), in every layer."""
    for layer in cache.layers:
        if getattr(layer, "is_initialized", False) and layer.keys is not None and layer.keys.numel():
            idx = index.to(layer.keys.device)
            layer.keys = layer.keys.index_select(-2, idx)
            layer.values = layer.values.index_select(-2, idx)


def packed_layout(prefix: int, starts: Sequence[int], lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions [Q] and the boolean attention pattern [Q, prefix + Q] of packed blocks (see module doc).

    `prefix` is the number of cache entries before the packed tokens; block j starts at position
    `starts[j]` (<= prefix) and has `lengths[j]` tokens."""
    q = sum(lengths)
    pos = torch.empty(q, dtype=torch.long)
    allow = torch.zeros(q, prefix + q, dtype=torch.bool)
    o = 0
    for s, n in zip(starts, lengths, strict=True):
        pos[o:o + n] = torch.arange(s, s + n)
        allow[o:o + n, :s] = True
        allow[o:o + n, prefix + o:prefix + o + n] = torch.tril(torch.ones(n, n, dtype=torch.bool))
        o += n
    return pos, allow


def key_positions(prefix: int, packed_pos: torch.Tensor) -> torch.Tensor:
    """Positions of every key: cache entries 0..prefix-1, then the packed tokens' positions."""
    return torch.cat([torch.arange(prefix), packed_pos])


def additive(allow: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[Q, K] boolean -> [1, 1, Q, K] additive float mask (0 = attend, dtype's min = blocked)."""
    m = torch.zeros(allow.shape, dtype=dtype)
    m.masked_fill_(~allow, torch.finfo(dtype).min)
    return m[None, None]


def model_masks(config: Any, allow: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
                dtype: torch.dtype, device: torch.device) -> Any:
    """The attention mask argument for `config`'s model: one 4D mask, or {layer type: 4D mask} for models
    whose layers mix full and sliding-window attention (those built with `config.layer_types`)."""

    def build(window: int | None) -> torch.Tensor:
        a = allow
        if window:
            a = a & ((q_pos[:, None] - k_pos[None, :]) < int(window))
        return additive(a, dtype).to(device)

    text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(text_cfg, "sliding_window", None)
    layer_types = getattr(text_cfg, "layer_types", None)
    if layer_types:
        return {t: build(window if t == "sliding_attention" else None) for t in set(layer_types)}
    return build(window)


@torch.no_grad()
def forward_packed(model: torch.nn.Module, cache, blocks: Sequence[Sequence[int]], starts: Sequence[int],
                   keep_logits: Sequence[int] | None = None) -> torch.Tensor:
    """Run the packed `blocks` over `cache` (appending their keys/values); float32 logits [n, V] at the
    packed indices `keep_logits` (all packed tokens when None)."""
    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    prefix = cache_len(cache)
    lengths = [len(b) for b in blocks]
    q_pos, allow = packed_layout(prefix, starts, lengths)
    mask = model_masks(model.config, allow, q_pos, key_positions(prefix, q_pos), dtype, dev)
    ids = torch.tensor([[t for b in blocks for t in b]], dtype=torch.long, device=dev)
    kwargs: dict[str, Any] = {}
    if keep_logits is not None:
        kwargs["logits_to_keep"] = torch.tensor(list(keep_logits), dtype=torch.long, device=dev)
    out = model(input_ids=ids, position_ids=q_pos[None].to(dev), attention_mask=mask, cache=cache,
                use_cache=True, **kwargs)
    return out.logits[0].float()


@torch.no_grad()
def forward_step(model: torch.nn.Module, cache, ids: Sequence[int]) -> torch.Tensor:
    """Append `ids` to the cache (plain causal forward); float32 logits [V] after the last one."""
    dev = next(model.parameters()).device
    x = torch.tensor([list(ids)], dtype=torch.long, device=dev)
    out = model(input_ids=x, cache=cache, use_cache=True, logits_to_keep=1)
    return out.logits[0, -1].float()
