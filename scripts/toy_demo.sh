#!/usr/bin/env bash
# The smallest real k-RF chain, on a laptop CPU with no download: toy bimodal demonstrations ->
# 1-RF -> 2-RF (reflow) -> distilled 1-step student, then evaluation at 1, 2, 4, 10 steps.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-outputs/toy}"
DATA="${DATA:-data/toy}"
HF=".venv/bin/hf-reflow"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

[ -d "$DATA" ] || "$HF" dataset toy --root="$DATA" --episodes=200
# --resume=true makes a rerun skip finished stages and continue interrupted ones.
"$HF" train --config_path=recipes/toy/1rf.yaml --dataset.root="$DATA" --output_dir="$OUT/1rf" --resume=true
"$HF" train --config_path=recipes/toy/2rf.yaml --dataset.root="$DATA" --teacher.path="$OUT/1rf" --output_dir="$OUT/2rf" --resume=true
"$HF" train --config_path=recipes/toy/distill.yaml --dataset.root="$DATA" --teacher.path="$OUT/2rf" --output_dir="$OUT/distill" --resume=true
"$HF" eval --policy.path="$OUT/1rf,$OUT/2rf,$OUT/distill" --dataset.root="$DATA" --num_steps=1,2,4,10 \
  --env=toy --episodes=100 --output="$OUT/results.json"
