"""Tiny random checkpoints of every supported family, built with transformers' own config classes
and saved as real safetensors folders with a real (small, trained) BPE tokenizer and chat template.
"""

from __future__ import annotations

import json
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


GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>{{ 'model' if message['role'] == 'assistant' "
    "else message['role'] }}\n{{ message['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@lru_cache(maxsize=1)
def tiny_sp_tokenizer():
    """A real SentencePiece-style tokenizer (512 tokens; `▁` word marker, `<0xNN>` byte fallback, BOS added
    on encode), trained on WikiText-2 validation text: the other tokenizer kind of a cross-tokenizer pair
    (Gemma/Llama-2 style), beside `tiny_tokenizer()`'s byte-level BPE (GPT-2/SmolLM2 style)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials, limit_alphabet=120)
    base = Tokenizer(models.BPE(unk_token="<unk>"))
    base.normalizer = normalizers.Replace(" ", "▁")
    base.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    lines = WIKI_VALID.read_text(encoding="utf-8").splitlines()[:3000]
    base.train_from_iterator(lines, trainer)
    # The 256 byte tokens are ordinary vocabulary entries (as in Gemma's and Llama-2's tokenizer.json), so
    # decoding keeps them; the trained BPE merges are reused unchanged.
    trained = json.loads(base.to_str())["model"]
    vocab = dict(trained["vocab"])
    for i in range(256):
        vocab.setdefault(f"<0x{i:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.add_special_tokens(specials)
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                       special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>", add_bos_token=True)
    fast.chat_template = GEMMA_CHAT_TEMPLATE
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
                    dtype: torch.dtype = torch.float32, tokenizer: str = "bpe", **overrides) -> Path:
    """Save a random tiny model of `family` (+ tokenizer) at `path`; returns the path.

    `tokenizer`: "bpe" (byte-level BPE, 512 tokens) or "sp" (SentencePiece-style with byte fallback; the
    vocabulary then holds its 256 byte tokens too, and the special ids follow that tokenizer)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    if tokenizer == "sp":
        tok = tiny_sp_tokenizer()
        overrides = {"vocab_size": len(tok), "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                     "pad_token_id": tok.pad_token_id, **overrides}
    else:
        tok = tiny_tokenizer()
    cfg = tiny_config(family, layers, **overrides)
    model = AutoModelForCausalLM.from_config(cfg)
    # Random init is tiny (std 0.02): scale weights up so blocks matter and perplexities differ.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.normal_(0, 0.08)
    model = model.to(dtype)
    path = Path(path)
    model.generation_config.bos_token_id = cfg.bos_token_id
    model.generation_config.eos_token_id = cfg.eos_token_id
    model.generation_config.pad_token_id = cfg.pad_token_id
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def user_folder(path: Path) -> Path:
    """A folder of a user's own files (not written by compress), mode 0751."""
    path.mkdir()
    (path / "thesis.tex").write_text("\\chapter{Four years}")
    (path / "photos").mkdir()
    (path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    os.chmod(path, 0o751)
    return path


def snapshot(path: Path) -> dict[str, object]:
    """Every file's bytes and every folder's mode below `path`: equal snapshots, nothing changed."""
    import stat

    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else stat.S_IMODE(p.stat().st_mode))
            for p in [path, *sorted(path.rglob("*"))]}
