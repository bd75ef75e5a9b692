#!/usr/bin/env bash
# Which teacher γ for the β=0 (quality) student gives the best merge front? Validation prompts only.
#
# The rule, written down before any of these numbers existed (2026-11-26, session 6):
#   for γ_q in {1.5 (the demo's γ*), 2, 3}: train the β=0 student against the CFG teacher at γ_q
#   (seed 0, the demo preset, 120 steps); keep the demo's diversity student (additive β=5, γ*=1.5);
#   evaluate on the 48 validation prompts × 4 the CFG sweep γ ∈ {1.5, 2, 3} and the merges
#   λ ∈ {0, 0.25, 0.5, 0.75, 1}; choose the γ_q with the largest merge-front minus CFG-front
#   hypervolume; ties (within 0.001) → the smallest γ_q.
# Run after `make demo` (its shipped base, judges and β=0/β=5 students in runs/demo).
set -euo pipefail
R=runs/front_gamma; D=runs/demo; mkdir -p $R
common=(--embedder $D/shipped/embedder --scorer $D/shipped/scorer --data-dir data/small --threads 1)
for g in 2 3; do
    [ -f $R/beta0_g$g/DONE.json ] || divcfg finetune --preset demo --max-steps 120 --base $D/shipped/base --gamma $g \
        --beta 0 --seed 0 "${common[@]}" --out $R/beta0_g$g --resume --no-progress > $R/beta0_g$g.log 2>&1 &
done
wait
for g in 1.5 2 3; do
    q=$D/ft_beta0; [ $g = 1.5 ] || q=$R/beta0_g$g
    [ -f $R/eval_g$g/results.json ] || divcfg evaluate --preset demo --split val --num-prompts 48 --generations 4 \
        --cfg-gammas 1.5,2,3 --temperatures "" --lams 0,0.25,0.5,0.75,1 --seed 0 --base $D/shipped/base \
        --quality $q --diversity $D/ft_beta5 "${common[@]}" --out $R/eval_g$g > $R/eval_g$g.log 2>&1 &
    [ $g = 2 ] && wait   # two at a time on two cores
done
wait
grep -h "hypervolume of the merge front" $R/eval_g*.log
