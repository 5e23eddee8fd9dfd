"""The modelling code of a partially pruned checkpoint, always rendered from the package's own template.

A checkpoint whose layers lost only their attention or only their MLP block lists them in
`config.json` under `compress_pruned_blocks` and needs `modeling_compress_pruned.py` (registered in
`auto_map`) to load with `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`.
That file is never copied from an input (an input's copy may be anything): every writer asks
`pruned_modeling_files(config, names)` for the config and file to write, and
`compress.checkpoint.save.save_checkpoint` refuses a config naming the module without its file.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from compress.arch.blocks import PRUNED_KEY, pruned_blocks
from compress.arch.families import Family, family_for
from compress.errors import CompressError

MODELING_FILE = "modeling_compress_pruned.py"
MODELING_MODULE = MODELING_FILE[:-3]
TEMPLATE = "remote_modeling.py.tmpl"


def remote_modeling_source(family: Family, model_type: str) -> tuple[str, str]:
    """(source of modeling_compress_pruned.py, class name) for a transformers model type."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    base = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if base is None:
        raise CompressError(
            f"transformers has no causal-LM class for model_type {model_type!r}: cannot write loadable modeling code "
            "for partially pruned layers (remove whole layers, or use --export zeroed)"
        )
    cls = f"CompressPruned{base}"
    body = family.layers.rsplit(".", 1)[0]
    text = resources.files("compress.arch").joinpath(TEMPLATE).read_text(encoding="utf-8")
    for key, value in {
        "__BASE_CLASS__": base,
        "__CLASS__": cls,
        "__ATTN_MODULES__": repr(tuple(family.attn)),
        "__MLP_MODULES__": repr(tuple(family.mlp)),
        "__ATTN_MODULE__": repr(family.attn_module),
        "__MLP_MODULE__": repr(family.mlp_module),
        "__BODY__": repr(body),
    }.items():
        text = text.replace(key, value)
    return text, cls


def needs_pruned_modeling(config: dict[str, Any]) -> bool:
    """True when `config` lists pruned blocks or registers the pruned-model module in `auto_map`."""
    pruned = config.get(PRUNED_KEY)
    if isinstance(pruned, dict) and any(pruned.get(k) for k in pruned):
        return True
    auto = config.get("auto_map")
    return isinstance(auto, dict) and any(isinstance(v, str) and v.startswith(MODELING_MODULE + ".")
                                          for v in auto.values())


def pruned_modeling_files(config: dict[str, Any], names: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(config, {file name: text}) for an output with this config and these tensor names.

    When the config lists pruned blocks, the file is rendered from the template for the model's
    family and `auto_map` points at its class; otherwise the module is dropped from `auto_map` and
    no file is returned. A malformed `compress_pruned_blocks` is refused (CompressError). The input
    config is not modified."""
    cfg = dict(config)
    auto = {k: v for k, v in (cfg.get("auto_map") or {}).items()
            if not (isinstance(v, str) and v.startswith(MODELING_MODULE + "."))} \
        if isinstance(cfg.get("auto_map"), dict) else {}
    files: dict[str, str] = {}
    if any(pruned_blocks(cfg).values()):  # refuses a malformed map
        src, cls = remote_modeling_source(family_for(cfg, names), str(cfg.get("model_type", "")))
        auto["AutoModelForCausalLM"] = f"{MODELING_MODULE}.{cls}"
        files[MODELING_FILE] = src
    if auto:
        cfg["auto_map"] = auto
    else:
        cfg.pop("auto_map", None)
    return cfg, files
