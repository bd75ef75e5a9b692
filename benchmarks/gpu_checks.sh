#!/usr/bin/env bash
# The GPU checks of issues 8 (your model, your GPU), 9 (MusicGen) and 10 (LoRA, memory) in one call,
# for a lent CUDA machine whose python3 has torch, transformers, peft and accelerate but nothing of
# ours. Each check has its own time limit and a failure does not stop the others.
#
#   bash benchmarks/gpu_checks.sh OUTDIR [CHECK ...]      # checks: env hf inference memory musicgen hf_small inference_more
#
# Needs, carried beside the checkout (see the device tool's README): .whl/ with the wheels of
# miditok, symusic, pySmartDL and platformdirs (the built-in music tokenizer; memory.py uses it), and
# .gpu/data/tiny, the tiny music data set (`python -c "from benchmarks.finetune import stand_in_data; ..."`),
# since music21's corpus does not travel.
set -u
OUT=${1:?usage: gpu_checks.sh OUTDIR [CHECK ...]}; shift
CHECKS=${*:-env hf inference memory musicgen hf_small inference_more}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
EXTRA_SITE=""; [ -d .gpu/site ] && EXTRA_SITE=$PWD/.gpu/site   # a MiniLM copy in fp16 (the built-in model's caption embedder)
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:$PWD${EXTRA_SITE:+:$EXTRA_SITE} || echo "wheel install failed"
else
    export PYTHONPATH=$PWD
fi
LOG="$OUT/gpu_checks.log"
step() {  # step NAME LIMIT_S COMMAND...
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$LOG" | grep -v -E "Loading weights|it/s\]$" | tail -40
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
}
for c in $CHECKS; do
    case $c in
        env) step env 30 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
                python3 -c "import sys, torch, transformers, peft, accelerate; print(sys.version.split()[0], torch.__version__, torch.version.cuda, transformers.__version__, peft.__version__, accelerate.__version__, torch.cuda.get_device_name())"' ;;
        hf) step hf 90 python3 benchmarks/hf_gpu.py --device ${DEVICE:-cuda} --json "$OUT/hf_gpu.json" ;;
        inference) step inference 75 python3 benchmarks/inference.py --device ${DEVICE:-cuda} --model large --batch 32 --length 128 --no-reference ;;
        memory) step memory 150 python3 benchmarks/memory.py --device ${DEVICE:-cuda} --skip-ddp --data-dir .gpu/data/tiny ;;
        musicgen) step musicgen 180 python3 benchmarks/musicgen_gpu.py --size small --device ${DEVICE:-cuda} --steps 3 --repeats 2 \
                      --budget-s 40 --max-minutes 1.5 --json "$OUT/musicgen_gpu.json" ;;
        hf_small) step hf_small 60 python3 benchmarks/hf_gpu.py --device ${DEVICE:-cuda} --size small --steps 10 --json "$OUT/hf_gpu_small.json" ;;
        inference_more) step inference_b128 150 python3 benchmarks/inference.py --device ${DEVICE:-cuda} --model large --batch 128 --length 128 --no-reference
                        step inference_small 45 python3 benchmarks/inference.py --device ${DEVICE:-cuda} --model small --batch 32 --length 128 --no-reference ;;
        *) echo "unknown check $c" ;;
    esac
done
grep "^=== .*exit" "$LOG"
