"""Knowledge fusion of models: training-free and training-based.

- `scorers`: verifiers and reward models that score sampled responses (shared by every fusion method);
- `render`: a prompt as token ids for one model (its chat template, or an explicit plain format);
- `sampling`: N seeded samples per prompt, batched;
- `select`: FuseChat-3.0 / WRPO records from one prompt's scored responses (pure functions);
- `build`, `data`, `config`: `compress fuse data`, resumable per prompt shard.
"""
