#!/usr/bin/env bash
# Implicit model fusion with compress: the FuseChat-3.0 recipe, the three-stage WRPO recipe, and SEFT.
#
#   bash examples/fuse_implicit.sh PROMPTS.jsonl TARGET SOURCE1 SOURCE2 [WORK]
#
# PROMPTS.jsonl: one {"prompt": ..., "reference": ...} per line (reference: what --verifier checks;
# leave it out and pass --reward-model RM instead for free-text tasks). Every step is resumable: rerun
# the script after a crash and finished steps are skipped (their output folder exists), while
# `compress fuse data` continues after its last finished prompt shard.
# A source without a chat template (a base model) needs an explicit plain rendering:
#   --plain NAME --plain-format 'few-shot examples ... {prompt}\nAnswer:'
set -euo pipefail
PROMPTS=$1 TARGET=$2 SRC1=$3 SRC2=$4 WORK=${5:-fusion}
SCORE=(--verifier gsm8k)            # or: --reward-model RM --margin-min LO --margin-max HI (RM units)
SAMPLE=(--n 4 --temperature 0.8 --top-p 0.95 --max-new-tokens 256)
TRAIN=(--epochs 1 --batch-size 4 --seed 42)
mkdir -p "$WORK"
run() { local out=$1; shift; [ -e "$out/compress.json" ] || "$@"; }

# Split the prompts: one third for SFT (WRPO's stage 1, FuseChat's SFT split), the rest for preferences.
n=$(wc -l < "$PROMPTS"); a=$((n / 3))
head -n "$a" "$PROMPTS" > "$WORK/A.jsonl"; tail -n +"$((a + 1))" "$PROMPTS" > "$WORK/B.jsonl"

# --- FuseChat-3.0 (arXiv 2503.04222): SFT on the best source responses, then LN-DPO on same-source pairs.
run "$WORK/data-a" compress fuse data "$WORK/A.jsonl" -o "$WORK/data-a" --source "$SRC1" --source "$SRC2" "${SCORE[@]}" "${SAMPLE[@]}"
run "$WORK/t-sft" compress distill train "$TARGET" --method sft --data "$WORK/data-a/sft.jsonl" -o "$WORK/t-sft" --lr 5e-6 "${TRAIN[@]}"

# --- WRPO (ICLR 2025), three stages: 1. SFT on y_ws of a third of the prompts (t-sft above);
#     2. sample the SFT'd target on the other prompts (its best = y_wt, its worst = y_l);
#     3. WRPO: -log σ(α·β·r(y_ws) + (1-α)·β·r(y_wt) - β·r(y_l)), α ramping 0 -> 0.1, β 0.01, summed log-ratios.
run "$WORK/data-b" compress fuse data "$WORK/B.jsonl" -o "$WORK/data-b" --source "$SRC1" --source "$SRC2" --target "$WORK/t-sft" "${SCORE[@]}" "${SAMPLE[@]}"
run "$WORK/t-sft-wrpo" compress distill train "$WORK/t-sft" --method wrpo --data "$WORK/data-b/wrpo.jsonl" -o "$WORK/t-sft-wrpo" --alpha 0.1 --beta 0.01 --lr 3e-7 "${TRAIN[@]}"

# FuseChat-3.0's second stage on the same prompts: LN-DPO (β 10 on per-token means) on the same-source pairs.
run "$WORK/t-sft-lndpo" compress distill train "$WORK/t-sft" --method ln-dpo --data "$WORK/data-b/dpo.jsonl" -o "$WORK/t-sft-lndpo" --beta 10 --lr 1e-6 "${TRAIN[@]}"

# --- SEFT: a reviser trained on weak -> strong and strong -> itself pairs of the scored samples, then the
#     policy fine-tuned on the reviser's revisions of its own answers (fix / keep rates in the report).
cat "$WORK/data-a/samples.jsonl" "$WORK/data-b/samples.jsonl" > "$WORK/samples.jsonl"
run "$WORK/t-seft" compress distill seft "$TARGET" --samples "$WORK/samples.jsonl" --prompts "$WORK/B.jsonl" -o "$WORK/t-seft" --rounds 1 --verifier gsm8k "${TRAIN[@]}"
