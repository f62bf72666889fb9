#!/usr/bin/env bash
# One GPU check for a machine with one CUDA GPU and a fresh checkout (issue 13): install, the
# CUDA-marked tests, train-dit 10 steps at 768 px / 128 frames (11B layout cut to 2 + 4 blocks)
# on random latents of both AEs, compare-ae on CUDA, Video DC-AE encode/decode at 768 px x 128
# frames, block streaming with prefetch against resident blocks, the sampling loop under
# --compile, one compiled DiT call (11B layout cut to 2 + 4 blocks) bf16 vs --quantize fp8 and
# int8-wo; writes OUT/gpu-check.json and OUT/gpu-check.md (ours beside gpu-anchors.md's
# numbers). With 2 or more GPUs it also runs an SP-2 (DeepSpeed-Ulysses) generate and train-dit
# step. Budget: about 12.5 minutes on an H100 (`--only STEP` runs a part).
#
#   benchmarks/gpu_check.sh                  # on the GPU machine (OUT = gpu-check/)
#   benchmarks/gpu_check.sh --out results/   # elsewhere
#   benchmarks/gpu_check.sh --dry-run        # the same steps at tiny shapes on the CPU
#
# Python: $PYTHON if set, else .venv/bin/python if it exists, else a new .venv-gpu that sees the
# system's packages (a preinstalled CUDA torch is reused; nothing is downloaded when the
# dependencies are already there).
set -euo pipefail
cd "$(dirname "$0")/.."

args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) args+=(--dry-run) ;;
    --out) args+=(--out "$2"); shift ;;
    --only) args+=(--only "$2"); shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (accepted: --dry-run, --out DIR, --only STEP)" >&2; exit 2 ;;
  esac
  shift
done

python="${PYTHON:-}"
if [ -z "$python" ] && [ -x .venv/bin/python ]; then
  python=.venv/bin/python
fi
if [ -z "$python" ]; then
  python3 -m venv --system-site-packages .venv-gpu
  python=.venv-gpu/bin/python
fi

# Install unless this checkout's vidcli is already importable (a dev venv, a rerun).
installed=$("$python" -c 'import pathlib, vidcli; print(pathlib.Path(vidcli.__file__).parents[1])' 2>/dev/null || true)
if [ "$installed" != "$PWD" ]; then
  echo "gpu_check: installing vidcli into $("$python" -c 'import sys; print(sys.prefix)')" >&2
  if ! "$python" -m pip install -q -e ".[dev]" >&2; then
    # No package index reachable: the environment must already hold the dependencies.
    "$python" -m pip install -q --no-deps --no-build-isolation -e . >&2
  fi
fi
"$python" -c 'import torch; print("gpu_check: torch", torch.__version__, "cuda", torch.cuda.is_available())' >&2

exec "$python" benchmarks/gpu_check.py ${args[@]+"${args[@]}"}
