"""Knowledge fusion of models with different tokenizers.

- `cool_fusion`: Cool-Fusion, training-free fusion at decoding time (`CoolFusionDecoder`);
- `boundary`: word boundaries common to several tokenizers (pure functions over strings and offsets);
- `tokens`: a tokenizer seen as bytes (exact token bytes, fragment encoding with spans);
- `kv`: KV-cache cropping, gathering and packed scoring of several continuations;
- `sources`: the models of an ensemble, their prompt formats and end tokens;
- `generate`: resumable answer files for `compress fuse generate`.
- `scorers`: verifiers and reward models that score sampled responses (shared by every fusion method);
- `render`: a prompt as token ids for one model (its chat template, or an explicit plain format);
- `sampling`: N seeded samples per prompt, batched;
- `select`: FuseChat-3.0 / WRPO records from one prompt's scored responses (pure functions);
- `build`, `data`, `config`: `compress fuse data`, resumable per prompt shard;
- `represent`, `align`, `aligned`, `vocabmap`, `fusion`, `train`, `profuser`, `pipeline`: explicit fusion
  (FuseLLM / FuseChat, `compress fuse represent | align | train | run`).
"""
