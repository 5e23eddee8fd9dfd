"""Layer-streamed search (`compress prune --offload`): search a model larger than the device.

The model is built as a skeleton without weights (parameters on the meta device; rotary and other
buffers are real, they are computed from the config). Weights are read from the checkpoint's
safetensors (memory-mapped, `Checkpoint.get`) onto the device only while they are used, then
dropped again (their parameters go back to the meta device):

- the embedding, once, to embed the calibration windows (the model's own forward runs with every
  decoder layer stubbed, which also captures the per-layer arguments - masks, RoPE of the layer's
  type - exactly as `BlockRunner.embed` does for a loaded model);
- decoder layer i, while layer i runs;
- the final norm and the LM head (for tied embeddings: the embedding tensor), at the end of a pass.

At most one of these is resident at a time; the device otherwise holds only activations.

A search step runs *layer-major*: the residual stream of the current pruned model S (the committed
stream) is advanced layer by layer, and every candidate c branches off it just before its first
block, then is advanced through every later block (minus S ∪ c) while that block's layer is
loaded. Each layer is therefore read once per step, whatever the number of candidates; the final
norm + LM head then give every candidate's loss. Each candidate runs exactly the block operations
of the `fast` search on the same batches, so the scores are those of `fast`/`naive` and the greedy
choice (argmin of (key, candidate index)) is identical. Early abandoning does not apply: every
candidate is carried to the end of the pass together with the others, so every score is complete. Candidate streams are kept on `stream_device` (the compute device when they fit there,
else the host); memory is (candidates + 1) x calibration tokens x hidden size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from compress.arch import PRUNED_KEY, Family
from compress.checkpoint.reader import Checkpoint
from compress.errors import CompressError
from compress.progress import progress_bar
from compress.prune.evaluators import Bound, Scores, check_finite_output
from compress.prune.score import BlockRunner, check_finite
from compress.prune.units import Unit

__all__ = ["OffloadEvaluator", "StreamedRunner", "WeightStreamer", "build_skeleton", "stored_dtype"]


def stored_dtype(ckpt: Checkpoint) -> torch.dtype:
    """The floating dtype the checkpoint's weights are stored in (the most common one)."""
    counts: dict[torch.dtype, int] = {}
    for t in ckpt.infos():
        if t.dtype.is_floating_point:
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel
    return max(counts, key=counts.get) if counts else torch.float32


def build_skeleton(ckpt: Checkpoint, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """The model of `ckpt` with every parameter on the meta device (no weight read), buffers on `device`.

    An already pruned checkpoint (`compress_pruned_blocks`) gets its identity blocks, as
    `compress.prune.modeling.load_pruned` builds it. Refuses a checkpoint that lacks a weight.
    """
    from accelerate import init_empty_weights

    from compress.arch import family_for
    from compress.prune.modeling import config_and_class, pruned_class, validate_pruned_map

    path = ckpt.path
    family = family_for(ckpt.config, ckpt.names())
    config, base = config_and_class(ckpt)
    cls = base
    if PRUNED_KEY in ckpt.config:
        validate_pruned_map(ckpt.config, f"{path}/config.json")
        cls = pruned_class(base, family)
    with init_empty_weights(include_buffers=False):
        model = cls._from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    for module in model.modules():
        for name, buf in module._buffers.items():
            if buf is not None:
                module._buffers[name] = buf.to(device)
    tied = bool(getattr(config.get_text_config(), "tie_word_embeddings", False))
    missing = [n for n, _ in model.named_parameters(remove_duplicate=False)
               if n not in ckpt and not (tied and n.startswith(family.head + "."))]
    if missing:
        raise CompressError(f"{path} lacks {len(missing)} weight tensors (e.g. {sorted(missing)[0]}): "
                            "refusing to initialise them randomly")
    return model


def _params(module: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(owner, leaf name, dotted name relative to `module`) of every parameter."""
    out = []
    for mod_name, mod in module.named_modules(remove_duplicate=False):
        for leaf, p in mod._parameters.items():
            if p is not None:
                out.append((mod, leaf, f"{mod_name}.{leaf}" if mod_name else leaf))
    return out


_LIBC: list = []


def _trim() -> None:
    """Give freed heap memory back to the OS (glibc keeps freed layer weights otherwise: the process
    would hold as much host memory as if every layer stayed loaded)."""
    if not _LIBC:
        try:
            import ctypes

            _LIBC.append(ctypes.CDLL("libc.so.6").malloc_trim)
        except (OSError, AttributeError):
            _LIBC.append(None)
    if _LIBC[0] is not None:
        _LIBC[0](0)


class WeightStreamer:
    """Puts one module's parameters on the device from the checkpoint, and takes them off again.

    Counts what it does (for tests and the benchmark): `loads` per module prefix, `resident` (the
    prefixes materialised now), `resident_bytes`/`peak_bytes` (parameter bytes on the device),
    `bytes_read`.
    """

    def __init__(self, ckpt: Checkpoint, device: torch.device, aliases: dict[str, str] | None = None):
        self.ckpt = ckpt
        self.device = device
        self.aliases = aliases or {}  # module prefix -> prefix to read instead (tied LM head)
        self.loads: dict[str, int] = {}
        self.resident: dict[str, int] = {}
        self.peak_bytes = 0
        self.bytes_read = 0

    @property
    def resident_bytes(self) -> int:
        return sum(self.resident.values())

    def load(self, module: nn.Module, prefix: str) -> None:
        if prefix in self.resident:
            return
        src_prefix = self.aliases.get(prefix, prefix)
        nbytes = 0
        for owner, leaf, name in _params(module):
            p = owner._parameters[leaf]
            t = self.ckpt.get(f"{src_prefix}.{name}")
            if tuple(t.shape) != tuple(p.shape):
                raise CompressError(f"{self.ckpt.path}: tensor {src_prefix}.{name} has shape {tuple(t.shape)}, "
                                    f"the model expects {tuple(p.shape)}")
            t = t.to(device=self.device, dtype=p.dtype)
            owner._parameters[leaf] = nn.Parameter(t, requires_grad=False)
            nbytes += t.numel() * t.element_size()
        self.resident[prefix] = nbytes
        self.loads[prefix] = self.loads.get(prefix, 0) + 1
        self.bytes_read += nbytes
        self.peak_bytes = max(self.peak_bytes, self.resident_bytes)

    def drop(self, module: nn.Module, prefix: str) -> None:
        for owner, leaf, _ in _params(module):
            p = owner._parameters[leaf]
            owner._parameters[leaf] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="meta"),
                                                   requires_grad=False)
        self.resident.pop(prefix, None)
        if self.device.type == "cpu":
            _trim()

    @contextmanager
    def loaded(self, *items: tuple[nn.Module, str]) -> Iterator[None]:
        try:
            for module, prefix in items:
                self.load(module, prefix)
            yield
        finally:
            for module, prefix in items:
                self.drop(module, prefix)


class _Captured(Exception):
    pass


class StreamedRunner(BlockRunner):
    """A `BlockRunner` over a weightless skeleton: weights are streamed in by the caller."""

    def __init__(self, model: nn.Module, family: Family, ckpt: Checkpoint, device: torch.device):
        super().__init__(model, family)
        self._device = device
        head = model.get_output_embeddings()
        tied = family.head + ".weight" not in ckpt
        self.streamer = WeightStreamer(ckpt, device, aliases={family.head: family.embed} if tied else None)
        self.embed_mod = model.get_submodule(family.embed)
        self.head_mod = head

    @property
    def device(self) -> torch.device:
        return self._device

    def layer(self, i: int) -> tuple[nn.Module, str]:
        return self.layers[i], f"{self.family.layers}.{i}"

    def head(self) -> list[tuple[nn.Module, str]]:
        return [(self.final_norm, self.family.final_norm), (self.head_mod, self.family.head)]

    @torch.no_grad()
    def embed(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        """The residual stream at position 0 (the embedding must be loaded), capturing each layer's
        arguments: the model's own forward runs with every decoder layer stubbed, and stops after
        the last one (the final norm is not needed here)."""
        ids = input_ids.to(self.device)
        seen: list[dict | None] = [None] * self.n_layers
        first: list[torch.Tensor] = []
        n = self.n_layers

        def stub(i: int):
            def forward(hidden_states, *args, **kwargs):
                seen[i] = {k: v for k, v in kwargs.items() if k not in ("cache", "past_key_values", "use_cache")}
                if i == 0:
                    first.append(hidden_states)
                if i == n - 1:
                    raise _Captured
                return hidden_states
            return forward

        for i, layer in enumerate(self.layers):
            layer.forward = stub(i)
        try:
            self.body(input_ids=ids, use_cache=False)
        except _Captured:
            pass
        finally:
            for layer in self.layers:
                del layer.forward
        if any(s is None for s in seen) or not first:
            raise CompressError("could not capture the decoder layers' arguments of this model for --offload")
        self._ctx[tuple(ids.shape)] = seen  # type: ignore[assignment]
        return first[0], None


class OffloadEvaluator:
    """Layer-major exact scoring with at most one layer's weights on the device (module docstring)."""

    def __init__(self, runner: StreamedRunner, windows: torch.Tensor, batch_size: int,
                 removed: set[int] | None = None, stream_device: torch.device | None = None):
        self.runner = runner
        self.batches = [windows[i:i + batch_size] for i in range(0, windows.shape[0], batch_size)]
        self.tokens = windows.shape[0] * (windows.shape[1] - 1)
        self.removed: set[int] = set(removed or ())
        self.stream_device = stream_device or runner.device
        self.passes = 0
        with torch.no_grad(), runner.streamer.loaded((runner.embed_mod, runner.family.embed)):
            self.h0 = [runner.embed(ids)[0].to(self.stream_device) for ids in self.batches]

    def _block(self, h: torch.Tensor, pos: int) -> torch.Tensor:
        return self.runner.block(h.to(self.runner.device), pos).to(self.stream_device)

    @torch.no_grad()
    def run_pass(self, units: Sequence[Unit], desc: str, influence: list[float] | None = None) -> tuple[dict[str, float], float]:
        """One pass over the layers: (loss of every unit's S ∪ unit, loss of S).

        With `influence` (a list of n_layers zeros), also accumulates ShortGPT's block influence of
        every layer of the current model (mean over tokens of 1 − cos(layer input, layer output)).
        """
        r = self.runner
        by_first: dict[int, list] = {}
        for u in units:
            by_first.setdefault(u.first, []).append(u)
        skips = {u.name: self.removed | u.positions for u in units}
        committed = list(self.h0)
        streams: dict[str, list[torch.Tensor]] = {}
        nb = len(self.batches)
        counts = [0] * r.n_layers
        self.passes += 1
        with progress_bar(desc, r.n_layers + 1) as advance:
            for i in range(r.n_layers):
                pos = (2 * i, 2 * i + 1)
                # Read the layer only if some stream (committed, or a candidate's) computes a block of it.
                names = list(streams) + [u.name for p in pos for u in by_first.get(p, ())]
                wanted = any(p not in self.removed for p in pos) or any(
                    p not in skips[name] for name in names for p in pos)
                layer_in = committed
                if wanted:
                    with r.streamer.loaded(r.layer(i)):
                        for p in pos:
                            for u in by_first.get(p, ()):
                                streams[u.name] = list(committed)
                            for name, st in streams.items():
                                if p not in skips[name]:
                                    for b in range(nb):
                                        st[b] = self._block(st[b], p)
                            if p not in self.removed:
                                committed = [self._block(h, p) for h in committed]
                                for h in committed:
                                    check_finite_output(h, p)
                else:
                    for p in pos:
                        for u in by_first.get(p, ()):
                            streams[u.name] = list(committed)
                if influence is not None:
                    from compress.prune.baselines import block_influence

                    for x, y in zip(layer_in, committed, strict=True):
                        bi = block_influence(x, y)
                        influence[i] += float(bi.double().sum())
                        counts[i] += bi.numel()
                advance(1)
            losses: dict[str, float] = {}
            with r.streamer.loaded(*r.head()):
                for name, st in streams.items():
                    total = 0.0
                    for b, ids in enumerate(self.batches):
                        total += r.loss(st[b].to(r.device), ids)
                    check_finite(total, f"with {name} removed")
                    losses[name] = total
                base = 0.0
                for b, ids in enumerate(self.batches):
                    base += r.loss(committed[b].to(r.device), ids)
            advance(1)
        if influence is not None:
            for i in range(r.n_layers):
                influence[i] = influence[i] / max(counts[i], 1)
                if math.isnan(influence[i]):
                    influence[i] = 0.5
        return losses, base

    def scores(self, units: Sequence[Unit], bound: Bound | None, desc: str) -> Scores:
        """Every unit's complete loss from one layer-major pass (`bound` is not needed: nothing is
        abandoned, the argmin is the same)."""
        losses = self.run_pass(units, f"{desc}, layer by layer")[0]
        for u in units:
            yield u, losses[u.name], True

    def current_loss(self) -> float:
        loss = self.run_pass([], "loss of the current model")[1]
        check_finite(loss, "of the model before this step")
        return loss

    def block_influence(self) -> list[float]:
        """ShortGPT's BI of every layer of the current model, from one streamed pass."""
        bi = [0.0] * self.runner.n_layers
        self.run_pass([], "block influence, layer by layer", influence=bi)
        return bi

    def commit(self, units: Sequence[Unit]) -> None:
        for u in units:
            self.removed |= u.positions

    def close(self) -> None:
        self.h0 = []
