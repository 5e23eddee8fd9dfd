"""Tiny random checkpoints of every supported family, built with transformers' own config classes
and saved as real safetensors folders with a real (small, trained) BPE tokenizer and chat template.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch

SHARED = Path(os.environ.get("COMPRESS_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DATA = SHARED / "data"
WIKI_TEST = DATA / "wikitext-2-raw" / "wiki.test.raw"
WIKI_VALID = DATA / "wikitext-2" / "valid.txt"

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VOCAB = 512
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")


@lru_cache(maxsize=1)
def tiny_tokenizer():
    """A real byte-level BPE tokenizer (512 tokens) trained on WikiText-2 validation text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = WIKI_VALID.read_text(encoding="utf-8").splitlines()[:3000]
    tok.train_from_iterator(lines, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(family: str, layers: int = 4, **overrides):
    import transformers as tf

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    if family == "llama":
        cfg = tf.LlamaConfig(**common)
    elif family == "mistral":
        cfg = tf.MistralConfig(**common, sliding_window=None)
    elif family == "qwen2":
        cfg = tf.Qwen2Config(**common)
    elif family == "qwen3":
        cfg = tf.Qwen3Config(**common, head_dim=16)
    elif family == "gemma2":
        cfg = tf.Gemma2Config(**{**common, "tie_word_embeddings": True}, head_dim=16, sliding_window=32,
                              query_pre_attn_scalar=16)
    elif family == "gemma3":
        cfg = tf.Gemma3TextConfig(**{**common, "tie_word_embeddings": True}, head_dim=16, sliding_window=32,
                                  query_pre_attn_scalar=16)
    elif family == "phi3":
        cfg = tf.Phi3Config(**common)
    else:
        raise ValueError(family)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def make_tiny_model(path: str | os.PathLike[str], family: str = "llama", layers: int = 4, seed: int = 0,
                    dtype: torch.dtype = torch.float32, **overrides) -> Path:
    """Save a random tiny model of `family` (+ tokenizer) at `path`; returns the path."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(family, layers, **overrides)
    model = AutoModelForCausalLM.from_config(cfg)
    # Random init is tiny (std 0.02): scale weights up so blocks matter and perplexities differ.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.normal_(0, 0.08)
    model = model.to(dtype)
    path = Path(path)
    model.save_pretrained(str(path))
    tiny_tokenizer().save_pretrained(str(path))
    return path
