"""Layer-pruning baselines, run through the same search/report machinery as BlockPruner.

- ShortGPT (Men et al. 2024, "ShortGPT: Layers in Large Language Models are More Redundant Than You
  Expect"; official icip-cas/ShortGPT `metrics.py`): Block Influence of layer i,

      BI_i = 1 − E_t[ cos(X_{i,t}, X_{i+1,t}) ],

  X_i the residual input of layer i and X_{i+1} its output, the cosine per token over the hidden
  dimension. One pass over the calibration windows; the layers with the lowest BI are removed in
  one shot. Decisions: the row-wise cosine instead of the official N×N product's
  diagonal; the layer *outputs* are hooked (HF's last `hidden_states` entry is after the final
  norm); a NaN BI is set to 0.5 as the official code does.
- SLEB (Song et al., ICML 2024; official `sleb.py`): greedy whole-layer removal by calibration
  NLL, the first and last layers never candidates (barriers 1/1) - the greedy loop of `search.py`
  over layer units.
- `layer`: BlockPruner's own search over whole layers (every layer a candidate), the ablation of
  the paper's §4.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from compress.arch.families import Family
from compress.model.logits import decoder_of
from compress.prune.mask import decoder_layers
from compress.prune.registry import METHODS
from compress.prune.units import Unit

SLEB_BARRIERS = METHODS["sleb"].barriers


def block_influence(x_in: torch.Tensor, x_out: torch.Tensor) -> torch.Tensor:
    """Per-token 1 − cos(x_in, x_out) over the last (hidden) dimension, in fp32 (ShortGPT's BI)."""
    return 1.0 - F.cosine_similarity(x_in.float(), x_out.float(), dim=-1, eps=1e-8)


@torch.no_grad()
def shortgpt_scores(model: nn.Module, family: Family, windows: torch.Tensor, batch_size: int = 4) -> list[float]:
    """BI of every decoder layer: mean over all calibration tokens, via forward hooks."""
    layers = decoder_layers(model, family)
    sums = torch.zeros(len(layers), dtype=torch.float64)
    counts = torch.zeros(len(layers), dtype=torch.float64)
    inputs: dict[int, torch.Tensor] = {}

    def pre(i):
        def hook(_m, args, kwargs):
            inputs[i] = args[0] if args else kwargs["hidden_states"]
        return hook

    def post(i):
        def hook(_m, args, kwargs, out):
            y = out[0] if isinstance(out, tuple) else out
            bi = block_influence(inputs.pop(i), y)
            sums[i] += bi.double().sum().item()
            counts[i] += bi.numel()
        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(pre(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(post(i), with_kwargs=True))
    body = decoder_of(model)
    device = next(model.parameters()).device
    try:
        for start in range(0, windows.shape[0], batch_size):
            body(input_ids=windows[start:start + batch_size].to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    scores = (sums / counts.clamp(min=1)).tolist()
    return [0.5 if math.isnan(s) else float(s) for s in scores]


def rank_by_score(units: list[Unit], scores: list[float]) -> list[Unit]:
    """Units ordered by ascending score of their layer (ties: lower layer first)."""
    return sorted(units, key=lambda u: (scores[u.blocks[0][0]], u.index))
