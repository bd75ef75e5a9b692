#!/usr/bin/env bash
# Issue 11, lever 1 on a lent GPU: the shipped base's architecture (the `small` preset, 3.8 M
# parameters) trained for longer than the CPU allows. The CPU base stopped at 660 steps (about two
# epochs of data/small); this trains the same preset, seed and data for several step budgets side
# by side (each its own warm-up + cosine schedule, one process each on the one GPU).
#
#   bash benchmarks/gpu_pretrain.sh OUTDIR [STEPS ...]     # default budgets: 1320 2640 5280 10560
#
# The rule, fixed before the runs: the budget whose final checkpoint has the lowest conditional NLL
# on *all* validation pieces (never test) wins, among the runs that finished their budget (a run
# stopped by the time cap is excluded). Everything comes back as one archive, OUTDIR/gpu_pretrain.tgz
# (the device returns at most 8 files per call): best/ (the chosen weights, config, tokenizer,
# metrics), choice.json, env.txt and every run's log, metrics and DONE.json.
#
# Needs, carried beside the checkout: .whl/ (miditok, symusic, pySmartDL, platformdirs wheels for the
# device's Python; the tokenizer uses miditok) and .gpu/pretrain/ (data/small's train/val splits,
# tokenizer, manifest and caption-embedding cache; *.gz files are unpacked). NOWHL=1 skips the
# wheels (a local dry run); DEVICE=cpu runs it on the CPU.
set -u
FINAL=${1:?usage: gpu_pretrain.sh OUTDIR [STEPS ...]}; shift
OUT=/tmp/divcfg_pretrain_out; rm -rf "$OUT"
STEPS=${*:-1320 2640 5280 10560}
DEVICE=${DEVICE:-cuda}; MAX_MIN=${MAX_MIN:-5.0}; EVAL_EVERY=${EVAL_EVERY:-330}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=$PWD
if [ -d .whl ] && [ -z "${NOWHL:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:$PWD || echo "wheel install failed"
fi
DATA=/tmp/divcfg_pretrain_data; RUNS=/tmp/divcfg_pretrain_runs
rm -rf "$DATA" "$RUNS"; mkdir -p "$DATA" "$RUNS"
for f in .gpu/pretrain/*; do
    case $f in *.gz) gunzip -c "$f" > "$DATA/$(basename "${f%.gz}")" ;; *) cp "$f" "$DATA/" ;; esac
done
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
  python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__)"; } | tee "$OUT/env.txt"
N_VAL=$(wc -l < "$DATA/val.jsonl")
for S in $STEPS; do
    python3 -m divcfg pretrain --preset small --data-dir "$DATA" --out "$RUNS/base_$S" --max-steps "$S" \
        --max-minutes "$MAX_MIN" --eval-every "$EVAL_EVERY" --eval-pieces "$N_VAL" --ckpt-every 1000000 \
        --device "$DEVICE" --threads 2 > "$OUT/base_$S.log" 2>&1 &
done
wait
for S in $STEPS; do
    cp "$RUNS/base_$S/metrics.jsonl" "$OUT/base_$S.metrics.jsonl" 2>/dev/null
    cp "$RUNS/base_$S/DONE.json" "$OUT/base_$S.DONE.json" 2>/dev/null
    grep -E "^(step|done|error)" "$OUT/base_$S.log" | tail -4
done
python3 - "$RUNS" "$OUT" $STEPS <<'EOF'
import json, shutil, sys
from pathlib import Path
runs, out, steps = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
rows = []
for s in steps:
    conf = runs / f"base_{s}" / "checkpoint" / "config.json"
    if not conf.exists():
        print(f"budget {s}: no checkpoint"); continue
    c = json.loads(conf.read_text())
    rows.append((c["val"]["val/nll_cond"], s, c["step"], c["cut_short"], c["val"]))
    print(f"budget {s}: step {c['step']}, val nll cond {c['val']['val/nll_cond']:.4f} uncond "
          f"{c['val']['val/nll_uncond']:.4f} gain {c['val']['val/cond_gain']:.4f}, cut_short {c['cut_short']}")
finished = [r for r in rows if not r[3]]
if finished:
    best = min(finished)
    print(f"chosen: budget {best[1]} (lowest validation NLL among finished runs)")
    dst = out / "best"
    dst.mkdir(exist_ok=True)
    for f in ("model.safetensors", "config.json", "tokenizer.json"):
        shutil.copy(runs / f"base_{best[1]}" / "checkpoint" / f, dst / f)
    shutil.copy(runs / f"base_{best[1]}" / "metrics.jsonl", dst / "metrics.jsonl")
    (out / "choice.json").write_text(json.dumps({"chosen": best[1], "runs": [
        {"budget": r[1], "step": r[2], "cut_short": r[3], **r[4]} for r in rows]}, indent=1))
else:
    print("no run finished its budget")
EOF
mkdir -p "$FINAL" && tar czf "$FINAL/gpu_pretrain.tgz" -C "$OUT" . && ls -la "$FINAL"
