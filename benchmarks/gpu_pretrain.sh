#!/usr/bin/env bash
# Issue 11, lever 1 on a lent GPU: the shipped base's architecture (the `small` preset, 3.8 M
# parameters) trained for longer than the CPU allows. The CPU base stopped at 660 steps (about two
# epochs of data/small); this trains the same preset, seed and data for several step budgets side
# by side (each its own warm-up + cosine schedule, one process each on the one GPU).
#
#   bash benchmarks/gpu_pretrain.sh OUTDIR [STEPS ...]     # default budgets: 1320 2640 5280 10560
#   CD="0.2 0.5" EVAL=1 bash benchmarks/gpu_pretrain.sh OUTDIR 10560   # condition-dropout variants, then CFG on val
#
# CD (optional): condition-dropout rates; every budget is trained once per rate (runs base_S_cdX).
# EVAL (optional): after training, every finished run and the shipped base are evaluated on the GPU on
# EVAL_PROMPTS (128) validation prompts × 4 at γ=1 and CFG γ ∈ EVAL_GAMMAS ("2,3"), EVAL_BATCH rows per
# sampling batch (48), as `divcfg select`
# evaluates (sampling seed 0, caption embeddings from the data set's cache); docs/results/cond_dropout.
# Each run's final weights then come back as their own bf16 archive, weights_NAME.tgz.
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
CD=${CD:-}; EVAL=${EVAL:-}; EVAL_PROMPTS=${EVAL_PROMPTS:-128}; EVAL_GAMMAS=${EVAL_GAMMAS:-2,3}; EVAL_BATCH=${EVAL_BATCH:-48}
RUN_NAMES=""
for S in $STEPS; do
    if [ -z "$CD" ]; then RUN_NAMES="$RUN_NAMES $S"; else for X in $CD; do RUN_NAMES="$RUN_NAMES ${S}_cd$X"; done; fi
done
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
for R in $RUN_NAMES; do
    S=${R%%_cd*}; X=""; case $R in *_cd*) X=${R#*_cd} ;; esac
    python3 -m divcfg pretrain --preset small --data-dir "$DATA" --out "$RUNS/base_$R" --max-steps "$S" \
        --max-minutes "$MAX_MIN" --eval-every "$EVAL_EVERY" --eval-pieces "$N_VAL" --ckpt-every 1000000 \
        ${X:+--cond-dropout "$X"} --device "$DEVICE" --threads 2 > "$OUT/base_$R.log" 2>&1 &
done
wait
for R in $RUN_NAMES; do
    cp "$RUNS/base_$R/metrics.jsonl" "$OUT/base_$R.metrics.jsonl" 2>/dev/null
    cp "$RUNS/base_$R/DONE.json" "$OUT/base_$R.DONE.json" 2>/dev/null
    grep -E "^(step|done|error)" "$OUT/base_$R.log" | tail -4
done
python3 - "$RUNS" "$OUT" $RUN_NAMES <<'EOF'
import json, shutil, sys
from pathlib import Path
runs, out, steps = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
rows = []
for s in steps:
    conf = runs / f"base_{s}" / "checkpoint" / "config.json"
    if not conf.exists():
        print(f"run {s}: no checkpoint"); continue
    c = json.loads(conf.read_text())
    rows.append((c["val"]["val/nll_cond"], s, c["step"], c["cut_short"], c["val"]))
    print(f"run {s}: step {c['step']}, val nll cond {c['val']['val/nll_cond']:.4f} uncond "
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
mkdir -p "$FINAL"
if [ -n "$EVAL" ]; then
    rm -rf "$OUT/best"   # every run's weights come back on their own below
    # each run's final weights as bf16, one archive per run (the device returns files of ≤ 16 MiB)
    for R in $RUN_NAMES; do
        [ -f "$RUNS/base_$R/checkpoint/config.json" ] || continue
        python3 -c "import sys; from safetensors.torch import load_file, save_file; p = sys.argv[1] + '/model.safetensors'; \
save_file({k: v.bfloat16().contiguous() for k, v in load_file(p).items()}, sys.argv[1] + '/model_bf16.safetensors')" \
            "$RUNS/base_$R/checkpoint" && tar czf "$FINAL/weights_$R.tgz" -C "$RUNS/base_$R/checkpoint" \
            model_bf16.safetensors config.json tokenizer.json
    done
    tar czf "$FINAL/gpu_pretrain.tgz" -C "$OUT" .   # the training logs, in case the evaluations break
    # the evaluations: the shipped base and every finished run, side by side on the one GPU
    export DIVCFG_CAPTIONS_FROM_CACHE=1
    SHIP=/tmp/divcfg_shipped; rm -rf "$SHIP"
    python3 -c "import sys; from pathlib import Path; from divcfg.pretrained import install; \
[install(Path(sys.argv[1]) / c, c) for c in ('base', 'embedder', 'scorer')]" "$SHIP"
    evaluate() {  # evaluate NAME CHECKPOINT
        python3 -m divcfg evaluate --preset demo --split val --num-prompts "$EVAL_PROMPTS" --generations 4 \
            --cfg-gammas "$EVAL_GAMMAS" --temperatures "" --lams "" --embedder "$SHIP/embedder" \
            --scorer "$SHIP/scorer" --data-dir "$DATA" --seed 0 --threads 2 --device "$DEVICE" \
            --batch-size "$EVAL_BATCH" --base "$2" --out "$RUNS/eval_$1" > "$OUT/eval_$1.log" 2>&1
        cp "$RUNS/eval_$1/results.json" "$OUT/eval_$1.results.json" 2>/dev/null
    }
    evaluate shipped "$SHIP/base" &
    for R in $RUN_NAMES; do
        [ -f "$RUNS/base_$R/checkpoint/config.json" ] && evaluate "$R" "$RUNS/base_$R/checkpoint" &
    done
    wait
    python3 - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
for f in sorted(Path(sys.argv[1]).glob("eval_*.results.json")):
    systems = {s["name"]: s for s in json.loads(f.read_text())["systems"]}
    q0 = systems["base"]["quality"]
    cfg = {n: s for n, s in systems.items() if n.startswith("cfg_")}
    best = max(cfg, key=lambda n: cfg[n]["quality"]) if cfg else None
    print(f"{f.name[5:-13]}: base {q0:.3f} / {systems['base']['diversity']:.3f}; " + "; ".join(
        f"{n} {s['quality']:.3f} / {s['diversity']:.3f}" for n, s in cfg.items())
        + (f"; CFG gain G = {cfg[best]['quality'] - q0:+.3f} ({best})" if best else ""))
EOF
fi
tar czf "$FINAL/gpu_pretrain.tgz" -C "$OUT" . && ls -la "$FINAL"
