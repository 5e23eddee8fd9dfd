"""Model families as data: where the decoder layers are and which modules form each block.

Every decoder layer is split into an attention block and an MLP block ("minimal residual blocks",
BlockPruner). A block is named by the sub-modules of the layer it owns: removing the block removes
those modules' tensors and makes the block the identity on the residual stream.

Hazard: `post_attention_layernorm` is the pre-MLP norm in Llama,
Mistral, Qwen and Phi3, but the norm on the attention *output* in Gemma2/Gemma3 (sandwich norms).
Blocks are therefore mapped per family, never guessed from tensor names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from compress.errors import CompressError

ATTN, MLP = "attn", "mlp"
BLOCK_KINDS = (ATTN, MLP)


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    attn: tuple[str, ...] = ("input_layernorm", "self_attn")
    mlp: tuple[str, ...] = ("post_attention_layernorm", "mlp")
    # Output projections: zeroing them makes the block the identity (export mode "zeroed").
    attn_out: tuple[str, ...] = ("self_attn.o_proj",)
    mlp_out: tuple[str, ...] = ("mlp.down_proj",)
    layers: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    head: str = "lm_head"
    attn_module: str = "self_attn"
    mlp_module: str = "mlp"
    fused: tuple[str, ...] = ()  # fused projections, for information (Phi3)
    norm_plus_one: bool = False  # Gemma RMSNorm scales by (1 + w): never zero a norm to disable a block
    layer_type_fields: tuple[str, ...] = ()  # per-layer config lists that must follow layer deletion
    notes: str = ""
    # Tensors (relative to a layer) that the family has; used to recognise Llama-shaped unknowns.
    layer_tensors: frozenset[str] = field(default_factory=frozenset)

    def block_modules(self, kind: str) -> tuple[str, ...]:
        return self.attn if kind == ATTN else self.mlp

    def layer_prefix(self, i: int) -> str:
        return f"{self.layers}.{i}."


_LLAMA_LAYER = frozenset(
    {
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.o_proj.weight",
        "self_attn.q_proj.bias",
        "self_attn.k_proj.bias",
        "self_attn.v_proj.bias",
        "self_attn.o_proj.bias",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
        "mlp.gate_proj.bias",
        "mlp.up_proj.bias",
        "mlp.down_proj.bias",
    }
)

FAMILIES: tuple[Family, ...] = (
    Family("llama", ("llama",), layer_tensors=_LLAMA_LAYER),
    Family("mistral", ("mistral",), layer_tensors=_LLAMA_LAYER),
    Family("qwen2", ("qwen2",), layer_tensors=_LLAMA_LAYER, layer_type_fields=("layer_types",),
           notes="q/k/v biases belong to the attention block"),
    Family("qwen3", ("qwen3",), layer_type_fields=("layer_types",),
           layer_tensors=_LLAMA_LAYER | {"self_attn.q_norm.weight", "self_attn.k_norm.weight"},
           notes="q_norm/k_norm belong to the attention block"),
    Family(
        "gemma2",
        ("gemma2",),
        attn=("input_layernorm", "self_attn", "post_attention_layernorm"),
        mlp=("pre_feedforward_layernorm", "mlp", "post_feedforward_layernorm"),
        norm_plus_one=True,
        layer_type_fields=("layer_types",),
        notes="sandwich norms: h += N_pa(Attn(N_in(h))); h += N_pf(MLP(N_ff(h)))",
    ),
    Family(
        "gemma3",
        ("gemma3_text",),
        attn=("input_layernorm", "self_attn", "post_attention_layernorm"),
        mlp=("pre_feedforward_layernorm", "mlp", "post_feedforward_layernorm"),
        norm_plus_one=True,
        layer_type_fields=("layer_types",),
        notes="sandwich norms; q_norm/k_norm in the attention block; sliding/global pattern per layer",
    ),
    Family(
        "phi3",
        ("phi3",),
        fused=("self_attn.qkv_proj", "mlp.gate_up_proj"),
        notes="fused qkv_proj and gate_up_proj",
    ),
)

SUPPORTED = ", ".join(f.name for f in FAMILIES) + ", and Llama-shaped models"

_LAYER_RE_CACHE: dict[str, re.Pattern[str]] = {}


def _layer_re(family: Family) -> re.Pattern[str]:
    pat = _LAYER_RE_CACHE.get(family.layers)
    if pat is None:
        pat = re.compile(re.escape(family.layers) + r"\.(\d+)\.(.+)$")
        _LAYER_RE_CACHE[family.layers] = pat
    return pat


def family_for(config: dict[str, Any], tensor_names: list[str] | None = None) -> Family:
    """The family of a model, from its config's `model_type` (or Llama-shaped detection)."""
    model_type = config.get("model_type")
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    if tensor_names is not None and _is_llama_shaped(tensor_names):
        return Family(f"llama-like ({model_type})", (str(model_type),), layer_tensors=_LLAMA_LAYER,
                      notes="detected: tensor names match the Llama layout")
    raise CompressError(f"unsupported architecture {model_type!r}: supported are {SUPPORTED}")


def _is_llama_shaped(names: list[str]) -> bool:
    pat = _layer_re(FAMILIES[0])
    rel = set()
    for n in names:
        m = pat.match(n)
        if m:
            rel.add(m.group(2))
        elif not (n.startswith("model.embed_tokens.") or n.startswith("model.norm.") or n.startswith("lm_head.")):
            return False
    required = {"self_attn.q_proj.weight", "self_attn.o_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"}
    return bool(rel) and required <= rel and rel <= _LLAMA_LAYER


def split_layer_name(family: Family, name: str) -> tuple[int, str] | None:
    """'model.layers.3.mlp.up_proj.weight' -> (3, 'mlp.up_proj.weight'); None outside the layers."""
    m = _layer_re(family).match(name)
    return (int(m.group(1)), m.group(2)) if m else None


def block_of(family: Family, name: str) -> tuple[int, str] | None:
    """Which block a tensor belongs to: (layer, 'attn' | 'mlp'), or None (embeddings, final norm...)."""
    split = split_layer_name(family, name)
    if split is None:
        return None
    layer, rel = split
    for kind in BLOCK_KINDS:
        for module in family.block_modules(kind):
            if rel == module or rel.startswith(module + "."):
                return layer, kind
    raise CompressError(
        f"tensor {name!r} belongs to no block of the {family.name} map: this checkpoint is not the layout "
        f"{family.name} is supposed to have"
    )


def kind_of(family: Family, name: str) -> str:
    """Parameter kind for reports: embeddings, attention, mlp, norms, head, other."""
    if name.startswith(family.embed + "."):
        return "embeddings"
    if name.startswith(family.head + "."):
        return "head"
    if name.startswith(family.final_norm + "."):
        return "norms"
    split = split_layer_name(family, name)
    if split is None:
        return "other"
    module = split[1].rsplit(".", 1)[0]
    if module.startswith(family.attn_module + "."):
        return "attention"
    if module.startswith(family.mlp_module + "."):
        return "mlp"
    if "norm" in module:
        return "norms"
    return "other"


def num_layers(config: dict[str, Any]) -> int:
    n = config.get("num_hidden_layers")
    if n is None and isinstance(config.get("text_config"), dict):
        n = config["text_config"].get("num_hidden_layers")
    if not isinstance(n, int):
        raise CompressError("config.json has no num_hidden_layers")
    return n
