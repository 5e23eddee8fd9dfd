"""`merge_vs_mergekit.py --scale`: synthetic Llama-shaped checkpoints of about 1B parameters and the
disk's sequential throughput (the I/O floor of a merge).

The checkpoints are written once under a cache folder outside the repository (default
/work/bench-cache/merge-scale): a random bf16 base (N(0, 0.02)) and fine-tunes
θ_i = θ + 0.02·std(θ)·(0.6·c + 0.8·n_i) with a shared direction c and a private one n_i per tensor
(seeded), TinyLlama-shaped: hidden 2048, MLP 5632, 22 layers, 32 heads / 4 KV heads, a 49,152-token
vocabulary (SmolLM2's tokenizer files are copied beside them), untied LM head: 1.17B parameters.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632,
    "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 49152,
    "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
    "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")


def tensor_shapes(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, m, kv = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_key_value_heads"]
    d = h // cfg["num_attention_heads"] * kv
    out = [("model.embed_tokens.weight", (cfg["vocab_size"], h))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (d, h)),
                (p + "self_attn.v_proj.weight", (d, h)), (p + "self_attn.o_proj.weight", (h, h)),
                (p + "mlp.gate_proj.weight", (m, h)), (p + "mlp.up_proj.weight", (m, h)),
                (p + "mlp.down_proj.weight", (h, m))]
    return out + [("model.norm.weight", (h,)), ("lm_head.weight", (cfg["vocab_size"], h))]


def _tensor(name: str, shape: tuple[int, ...], j: int, variant: int) -> torch.Tensor:
    """Tensor j of the base (variant 0) or of fine-tune `variant`, deterministic."""
    g = torch.Generator().manual_seed(j)
    if name.endswith("norm.weight"):
        base = 1.0 + 0.05 * torch.randn(shape, generator=g)
    else:
        base = 0.02 * torch.randn(shape, generator=g)
    base = base.bfloat16()
    if variant == 0:
        return base
    scale = 0.02 * float(base.float().std())
    common = torch.randn(shape, generator=torch.Generator().manual_seed(1_000_000 + j))
    private = torch.randn(shape, generator=torch.Generator().manual_seed(10_000_000 * variant + j))
    return (base.float() + scale * (0.6 * common + 0.8 * private)).bfloat16()


def make_models(cache: Path, tokenizer_from: Path | None, n_ft: int = 2) -> list[Path]:
    """[base, ft1, ..., ft_n] under `cache`, written once (a folder is complete when it has config.json)."""
    from compress.checkpoint.writer import ShardedWriter, TensorSpec

    shapes = tensor_shapes(CONFIG)
    folders = [cache / ("base" if v == 0 else f"ft{v}") for v in range(n_ft + 1)]
    for v, folder in enumerate(folders):
        if (folder / "config.json").is_file():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        t0 = time.perf_counter()
        writer = ShardedWriter(folder, [TensorSpec(n, s, torch.bfloat16) for n, s in shapes])
        for j, (name, shape) in enumerate(shapes):
            writer.write(name, _tensor(name, shape, j, v))
        writer.close()
        for f in TOKENIZER_FILES:
            if tokenizer_from is not None and (tokenizer_from / f).is_file():
                shutil.copy2(tokenizer_from / f, folder / f)
        (folder / "config.json").write_text(json.dumps(CONFIG, indent=1) + "\n")
        print(f"wrote {folder} in {time.perf_counter() - t0:.0f}s", flush=True)
    return folders


def n_params() -> int:
    total = 0
    for _, s in tensor_shapes(CONFIG):
        n = 1
        for x in s:
            n *= x
        total += n
    return total


def disk_throughput(folder: Path, size: int = 2 << 30) -> dict:
    """Sequential write (with fsync) and cold read (the file dropped from the page cache) of `size` bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "throughput.tmp"
    block = os.urandom(1 << 20) * 16  # 16 MiB
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(size // len(block)):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    write_s = time.perf_counter() - t0
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        t0 = time.perf_counter()
        while os.read(fd, 16 << 20):
            pass
        read_s = time.perf_counter() - t0
    finally:
        os.close(fd)
        path.unlink()
    return {"bytes": size, "write_MBps": round(size / write_s / 1e6, 1), "read_MBps": round(size / read_s / 1e6, 1)}


def io_floor(read_bytes: int, write_bytes: int, tp: dict) -> float:
    """Seconds to read and write these bytes at the measured sequential rates."""
    return read_bytes / (tp["read_MBps"] * 1e6) + write_bytes / (tp["write_MBps"] * 1e6)


def scale_recipes(base: str, ft: list[str], layers: int) -> dict[str, dict]:
    common = {"dtype": "float32", "out_dtype": "bfloat16"}
    t = [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
         {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]}, {"value": 0.5}]
    return {
        "linear": {"merge_method": "linear", "models": [{"model": m, "parameters": {"weight": w}}
                                                        for m, w in zip([base, *ft], [0.5, 0.3, 0.2], strict=True)],
                   **common},
        "ties": {"merge_method": "ties", "base_model": base,
                 "models": [{"model": m, "parameters": {"weight": 0.5, "density": 0.5}} for m in ft],
                 "parameters": {"normalize": True}, **common},
        "slerp": {"merge_method": "slerp", "base_model": base,
                  "slices": [{"sources": [{"model": base, "layer_range": [0, layers]},
                                          {"model": ft[0], "layer_range": [0, layers]}]}],
                  "parameters": {"t": t}, **common},
    }


def models_read(method: str) -> int:
    """How many input checkpoints each method reads (every input is read once at least)."""
    return {"linear": 3, "ties": 3, "slerp": 2}[method]
