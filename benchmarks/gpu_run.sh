#!/usr/bin/env bash
# The GPU run of issue #16 in one call on one H200 (about 8 minutes of its ~9-minute budget): installs the
# carried wheels, runs the tests that skip without CUDA, then the CUDA benchmark, writing under $OUT:
#   log.txt          every phase's output (the CUDA tests' pytest report among them), with the machine,
#                    versions and elapsed seconds per phase
#   bench_mini.json  mini: float32/bfloat16/float16 x batch 1/8/32, graph-captured, min-dalle float16, floors,
#                    bf16-vs-fp32 agreement
#   bench_modes.json mini bfloat16, batch 1 and 8, step modes dynamic and static (what the graph buys)
#   bench_compiled.json  the same in cuda_graph_compiled
#   bench_mega.json  mega: the same grid as mini
#   bench_train.json training: the 100 M config and mini, bf16-mixed, batch 64
#   bench_train_compiled.json  the same, the network torch.compile'd
#   tables.md        every markdown table, and the README's GPU table filled in from the JSON files
# Phases run in order of what the issue's goals need first; one that would not finish inside BUDGET seconds
# (default 540) is skipped and says so, so the call always returns what it has.
# Before the call, on the machine that calls: bash scripts/gpu_wheels.sh (fills the git-ignored .whl/).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_out}"
BUDGET="${BUDGET:-540}"
mkdir -p "$OUT"

main() {
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || { echo "wheel install failed: run scripts/gpu_wheels.sh before the call, carry .whl"; exit 1; }
export PYTHONPATH="/tmp/site:$PWD" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
python3 -c "import dalle_mini_pt, torch, pytorch_lightning, transformers; print('torch', torch.__version__, 'cuda',
torch.version.cuda, 'lightning', pytorch_lightning.__version__, 'transformers', transformers.__version__)"

left() { echo $(( BUDGET - SECONDS )); }
# phase NAME SECONDS_IT_NEEDS COMMAND...: run it if it fits in what is left, under a timeout that keeps the
# budget
phase() {
    local name=$1 need=$2; shift 2
    if (( $(left) < need )); then
        echo "=== SKIPPED $name: $(left) s left, it needs about $need"; return
    fi
    echo "=== $name (at ${SECONDS} s, $(left) s left)"
    timeout --kill-after=5 $(( $(left) - 5 )) "$@"
    echo "=== $name: exit $?, done at ${SECONDS} s"
}

B="python3 benchmarks/bench.py --device cuda --threads 8 --timeout 240"
GRID="--batch-sizes 1 8 32 --dtypes float32 bfloat16 float16"
phase tests 120 python3 -m pytest -q -rA -p no:cacheprovider \
    tests/test_step_modes.py tests/test_bench.py::test_bench_tiny_cuda \
    tests/test_clip_scorer.py::test_scores_on_cuda_match_cpu \
    tests/test_vqgan.py::test_cuda_under_fp16_autocast_matches_cpu \
    "tests/test_configs.py::test_every_experiment_composes_and_instantiates[gpu]" \
    "tests/test_configs.py::test_every_experiment_composes_and_instantiates[mega_gpu]"
phase mini 110 $B --size mini $GRID --step-modes cuda_graph --sections generate mindalle floors agreement \
    --json "$OUT/bench_mini.json"
phase mega 120 $B --size mega $GRID --step-modes cuda_graph --sections generate mindalle floors \
    --json "$OUT/bench_mega.json"
phase train 40 $B --size mini --sections train floors --train-sizes 100m mini --train-batch 64 \
    --train-steps 5 --train-warmup 2 --json "$OUT/bench_train.json"
phase modes 45 $B --size mini --batch-sizes 1 8 --dtypes bfloat16 --step-modes dynamic static \
    --sections generate floors --json "$OUT/bench_modes.json"
# compiled last: compile time is the least known cost
phase compiled 70 $B --size mini --batch-sizes 1 8 --dtypes bfloat16 --step-modes cuda_graph_compiled \
    --sections generate floors --json "$OUT/bench_compiled.json"
phase train_compiled 80 $B --size mini --sections train floors --train-sizes 100m mini --train-modes compiled \
    --train-batch 64 --train-steps 5 --train-warmup 2 --json "$OUT/bench_train_compiled.json"

{
    echo "# README GPU table"; echo
    python3 benchmarks/bench.py --readme-table $(ls "$OUT"/bench_mini.json "$OUT"/bench_modes.json \
        "$OUT"/bench_compiled.json "$OUT"/bench_mega.json 2>/dev/null)
    for f in "$OUT"/bench_*.json; do
        [ -e "$f" ] || continue
        echo; echo "# $(basename "$f")"; echo
        python3 -c "import json, sys; sys.path.insert(0, 'benchmarks'); from bench_report import markdown
print(markdown(json.load(open('$f'))))"
    done
} > "$OUT/tables.md" 2>&1
echo "=== all done at ${SECONDS} s"
cat "$OUT/tables.md"
}

main 2>&1 | tee "$OUT/log.txt"
