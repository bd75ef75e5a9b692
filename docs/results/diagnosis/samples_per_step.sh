#!/usr/bin/env bash
# Samples per step and seed agreement (diagnosis item 8): the demo's recipe at 32 samples per step
# (16 prompts x 2), seeds 0 and 1, and the 16-sample recipe at seed 1 (seed 0 is runs/select/add_b5).
# Validation prompts only. Run after `make demo`.
set -e
R=runs/demo/shipped
ft() { divcfg finetune --preset demo --max-steps 120 --base $R/base --gamma 1.5 --beta 5 --reward-form additive \
  --embedder $R/embedder --scorer $R/scorer --data-dir data/small --resume --threads 1 --no-progress "$@"; }
ev() { divcfg evaluate --preset demo --split val --num-prompts 48 --generations 4 --cfg-gammas "" --temperatures "" --lams "" \
  --embedder $R/embedder --scorer $R/scorer --data-dir data/small --seed 0 --threads 1 --base $1/checkpoint --out $2; }
(ft --seed 0 --prompts-per-step 16 --out runs/long/b5_p16_s0 > runs/long/b5_p16_s0.log 2>&1 && ev runs/long/b5_p16_s0 runs/long/eval_b5_p16_s0 > runs/long/eval_b5_p16_s0.log 2>&1) &
(ft --seed 1 --prompts-per-step 16 --out runs/long/b5_p16_s1 > runs/long/b5_p16_s1.log 2>&1 && ev runs/long/b5_p16_s1 runs/long/eval_b5_p16_s1 > runs/long/eval_b5_p16_s1.log 2>&1) &
wait
ft --seed 1 --out runs/long/b5_s1 > runs/long/b5_s1.log 2>&1 && ev runs/long/b5_s1 runs/long/eval_b5_s1 > runs/long/eval_b5_s1.log 2>&1
