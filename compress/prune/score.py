"""BlockPruner's importance score (Zhong et al., arXiv 2406.10594, §3): calibration perplexity.

A candidate set of removed blocks S is scored by

    PPL(S) = exp( (1/R) Σ_r (1/n_r) Σ_t −log p(x_{r,t} | x_{r,<t}) )

over R calibration windows of equal length (n_r = n), so PPL(S) = exp(L(S) / (R·n)) with the loss
sum L(S) = Σ_r Σ_t NLL_{r,t}: ranking by PPL is ranking by L, and partial sums of L over windows
never decrease (every NLL ≥ 0), which is what makes early abandoning exact: a candidate whose partial
sum already exceeds the best complete one cannot win.

This module runs a decoder one *block* at a time on the residual stream:

    attention block:  h ← h + N_post(Attn(N_pre(h)))      (N_post only in Gemma2/3's sandwich)
    MLP block:        h ← h + N_post(MLP(N_pre(h)))

calling the layer's own sub-modules (the family map in `compress.arch` says which norms precede and
follow the main module). The arguments the model's own forward hands each decoder layer (causal or
sliding-window mask, rotary `position_embeddings` of that layer's type, `position_ids`) are captured
once per batch shape with forward pre-hooks, so every family's per-layer attention layout (Gemma's
sliding/global alternation, Gemma3's local RoPE base) is exactly the model's own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from compress.arch.families import ATTN, MLP, Family
from compress.errors import CompressError
from compress.model.logits import decoder_of, token_nll
from compress.prune.mask import decoder_layers, is_removed

Block = tuple[int, str]  # (layer index, 'attn' | 'mlp')
_DROP = ("cache", "past_key_values", "use_cache", "hidden_states")


def position(block: Block) -> int:
    """Depth position of a block: attn 0, mlp 0, attn 1, mlp 1, ... -> 0, 1, 2, 3, ..."""
    return 2 * block[0] + (1 if block[1] == MLP else 0)


def block_at(pos: int) -> Block:
    return pos // 2, (MLP if pos % 2 else ATTN)


def block_name(block: Block) -> str:
    return f"{block[1]} {block[0]}"


def batch_loss(model: nn.Module, normed_hidden: torch.Tensor, input_ids: torch.Tensor) -> float:
    """Summed token NLL of a batch, from final (normed) hidden states; fp32 NLL, chunked LM head."""
    return float(token_nll(model, normed_hidden, input_ids).sum())


class BlockRunner:
    """Runs a causal LM's decoder blocks one at a time (and the whole model, for reference)."""

    def __init__(self, model: nn.Module, family: Family):
        self.model = model
        self.family = family
        self.body = decoder_of(model)
        self.layers = decoder_layers(model, family)
        self.final_norm = model.get_submodule(family.final_norm)
        self.n_layers = len(self.layers)
        self._ctx: dict[tuple[int, int], list[dict]] = {}

    @property
    def n_positions(self) -> int:
        return 2 * self.n_layers

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def removed_in_model(self) -> set[int]:
        """Positions of blocks the loaded model already lacks (an already pruned checkpoint)."""
        return {position((i, k)) for i, layer in enumerate(self.layers) for k in (ATTN, MLP)
                if is_removed(layer, self.family, k)}

    @torch.no_grad()
    def embed(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the model's own forward once on a batch, capturing what each decoder layer receives.

        Returns (input of layer 0 = the residual stream at position 0, the model's final normed
        hidden states). The per-layer keyword arguments are kept for batches of this shape.
        """
        ids = input_ids.to(self.device)
        seen: list[dict | None] = [None] * self.n_layers
        first: list[torch.Tensor] = []

        def make_hook(i: int):
            def hook(_mod, args, kwargs):
                if seen[i] is None:
                    seen[i] = {k: v for k, v in kwargs.items() if k not in _DROP}
                if i == 0:
                    first.append(args[0] if args else kwargs["hidden_states"])
            return hook

        handles = [layer.register_forward_pre_hook(make_hook(i), with_kwargs=True)
                   for i, layer in enumerate(self.layers)]
        try:
            out = self.body(input_ids=ids, use_cache=False).last_hidden_state
        finally:
            for h in handles:
                h.remove()
        self._ctx[tuple(ids.shape)] = seen  # type: ignore[assignment]
        return first[0], out

    def _kwargs(self, layer: int, shape: Sequence[int]) -> dict:
        try:
            return self._ctx[(shape[0], shape[1])][layer]
        except KeyError:
            raise RuntimeError(f"no captured layer arguments for batch shape {tuple(shape[:2])}: call embed first") from None

    def block(self, h: torch.Tensor, pos: int) -> torch.Tensor:
        """h + f_p(h): the residual stream after block `pos` (the layer's own modules, in order)."""
        layer_idx, kind = block_at(pos)
        layer = self.layers[layer_idx]
        fam = self.family
        mods = fam.block_modules(kind)
        main = fam.attn_module if kind == ATTN else fam.mlp_module
        split = mods.index(main)
        x = h
        for name in mods[:split]:
            x = getattr(layer, name)(x)
        if kind == ATTN:
            x = getattr(layer, main)(hidden_states=x, cache=None, **self._kwargs(layer_idx, h.shape))[0]
        else:
            x = getattr(layer, main)(x)
        for name in mods[split + 1:]:
            x = getattr(layer, name)(x)
        return h + x

    def run(self, h: torch.Tensor, start: int, skip: set[int] | frozenset[int], stop: int | None = None) -> torch.Tensor:
        """Advance h through blocks start .. stop-1, leaving out the positions in `skip`."""
        end = self.n_positions if stop is None else stop
        for p in range(start, end):
            if p not in skip:
                h = self.block(h, p)
        return h

    def loss(self, h: torch.Tensor, input_ids: torch.Tensor) -> float:
        """Summed NLL of a batch from the residual stream after the last block."""
        return batch_loss(self.model, self.final_norm(h), input_ids.to(h.device))


def check_finite(loss: float, what: str) -> None:
    if not math.isfinite(loss):
        raise CompressError(
            f"the calibration loss is not finite {what}: the model overflows in this dtype "
            "(try --dtype fp32) or the calibration text is degenerate"
        )
