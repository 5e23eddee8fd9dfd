"""Knowledge fusion of models with different tokenizers.

- `cool_fusion`: Cool-Fusion, training-free fusion at decoding time (`CoolFusionDecoder`);
- `boundary`: word boundaries common to several tokenizers (pure functions over strings and offsets);
- `tokens`: a tokenizer seen as bytes (exact token bytes, fragment encoding with spans);
- `kv`: KV-cache cropping, gathering and packed scoring of several continuations;
- `sources`: the models of an ensemble, their prompt formats and end tokens;
- `generate`: resumable answer files for `compress fuse generate`.
"""
