#!/usr/bin/env bash
# Check petclf's whole GPU path on an air-gapped CUDA machine and record the figures:
#
#     tools/gpu_wheels.sh .whl                    # beforehand, where a package registry answers
#     tools/gpu_check.sh --wheels .whl OUT_DIR    # on the GPU machine: OUT_DIR/gpu_check.{log,json}
#     tools/gpu_check.sh --device cpu OUT_DIR     # the same steps at tiny sizes on a CPU (tests/test_gpu_check.py)
#
# Uses the machine's own python3 and torch (PYTHON=... to pick another interpreter); --wheels installs what it lacks
# (fastai and friends) from a folder of wheels into a temp folder put on PYTHONPATH, never touching torch. petclf
# itself runs from this checkout. The steps are in tools/gpu_check.py. Exit code: 0 every step passed, 1 a step
# failed, 2 bad usage or no CUDA GPU (without --device cpu).
set -euo pipefail
usage="usage: tools/gpu_check.sh [--device cuda|cuda:N|cpu] [--wheels DIR] [--steps a,b,...] [--keep] OUT_DIR"

device=cuda
wheels=""
extra=()
out=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) device="${2:?$usage}"; shift 2 ;;
    --wheels) wheels="${2:?$usage}"; shift 2 ;;
    --keep) extra+=(--keep); shift ;;
    --steps) extra+=(--steps "${2:?$usage}"); shift 2 ;;
    -h|--help) echo "$usage"; exit 0 ;;
    -*) echo "$usage" >&2; exit 2 ;;
    *) [[ -z "$out" ]] || { echo "$usage" >&2; exit 2; }; out="$1"; shift ;;
  esac
done
[[ -n "$out" ]] || { echo "$usage" >&2; exit 2; }
[[ "$device" == cpu || "$device" == cuda* ]] || { echo "$usage" >&2; exit 2; }

root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"

# say so in one line and stop, before installing anything, when there is no GPU to check
if [[ "$device" == cuda* ]]; then
  if ! found=$("$python" -c 'import torch; print(torch.__version__, torch.cuda.is_available())' 2>/dev/null); then
    echo "gpu_check: torch is not importable by $python; the GPU check needs a CUDA build of torch" >&2
    exit 2
  fi
  if [[ "$found" != *True ]]; then
    echo "gpu_check: no CUDA GPU here (torch ${found% *} sees none); --device cpu runs the CPU mode" >&2
    exit 2
  fi
fi

if [[ -n "$wheels" ]]; then
  site="${TMPDIR:-/tmp}/petclf-gpu-site"
  rm -rf "$site"
  mkdir -p "$out"
  "$python" "$root/tools/install_wheels.py" "$wheels" "$site" "$root/setup.cfg" | tee "$out/wheels.log"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
# petclf from this checkout, whether or not it is installed
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

exec "$python" "$root/tools/gpu_check.py" --device "$device" ${extra[@]+"${extra[@]}"} "$out"
