#!/usr/bin/env bash
# Download the wheels that tools/gpu_check.sh installs on an air-gapped CUDA machine (run this where a package
# registry answers):
#
#     tools/gpu_wheels.sh .whl                        # Python 3.12, manylinux x86_64 (the GPU machine)
#     tools/gpu_wheels.sh --python-version 3.11 DIR   # for another interpreter
#     tools/gpu_check.sh --wheels .whl OUT_DIR        # then, on the GPU machine
#
# The GPU machine brings torch (CUDA build), torchvision, timm, accelerate, onnxruntime, scikit-learn, safetensors,
# typer and rich; this fetches what petclf's train/predict/report/lr-find paths import beyond those (traced with
# `python -X importtime`), plus the small ones of those it may have too old, without dependencies (--no-deps: pip
# must never pull a second torch), at the versions the local environment tests with. gpu_check.sh installs only
# those the machine lacks or has too old (tools/install_wheels.py).
set -euo pipefail
usage="usage: tools/gpu_wheels.sh [--python-version X.Y] DIR"
LIMIT_MIB=60  # what one call to the GPU machine may carry is 64 MiB; leave room for the repository itself

# fastai and the small pure-Python packages it imports (fastprogress imports fasthtml, which imports starlette)
FASTAI="fastai fastcore fastprogress fastdownload fasttransform plum-dispatch beartype python-fasthtml starlette
  itsdangerous python-multipart anyio sniffio cloudpickle requests urllib3 certifi charset-normalizer idna"
# fastai imports pandas and matplotlib at import time; petclf draws lr_find.png and the report's figures with it
PLOTTING="matplotlib contourpy cycler fonttools kiwisolver pyparsing python-dateutil six pandas pytz tzdata"
# torch.onnx.export needs onnx (training writes model.onnx); onnx needs ml-dtypes and a recent protobuf
ONNX="onnx ml-dtypes protobuf"
# usually there already (torch, timm and typer bring them), cheap insurance for an older stack
SMALL="pyyaml jinja2 markupsafe tqdm typing-extensions packaging joblib threadpoolctl filelock"
# on the machine, but maybe older than setup.cfg asks: install_wheels.py puts these in only then
PETCLF="timm accelerate safetensors typer rich click shellingham markdown-it-py mdurl pygments"

pyver=3.12
while [[ $# -gt 0 ]]; do
  case "$1" in
    --python-version) pyver="${2:?$usage}"; shift 2 ;;
    -h|--help) echo "$usage"; exit 0 ;;
    -*) echo "$usage" >&2; exit 2 ;;
    *) [[ -z "${dir:-}" ]] || { echo "$usage" >&2; exit 2; }; dir="$1"; shift ;;
  esac
done
[[ -n "${dir:-}" ]] || { echo "$usage" >&2; exit 2; }

root="$(cd "$(dirname "$0")/.." && pwd)"
# the interpreter whose package versions are pinned: the project's venv, where the tests pass
python="${PYTHON:-$root/.venv/bin/python}"
[[ -x "$python" ]] || python=python3

# NAME==VERSION as installed locally; a bare NAME (the newest wheel) for what the local environment lacks
specs=$("$python" - $FASTAI $PLOTTING $ONNX $SMALL $PETCLF <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(name)
PY
)

mkdir -p "$dir"
# shellcheck disable=SC2086  # one argument per spec
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$dir" $specs

mib=$(du -sm "$dir" | cut -f1)
echo "$(ls "$dir"/*.whl | wc -l) wheels, ${mib} MiB in $dir (Python $pyver, manylinux x86_64):"
ls "$dir" | sed 's/-py[0-9].*\|-cp[0-9].*//' | tr '\n' ' '
echo
if (( mib > LIMIT_MIB )); then
  echo "error: $dir holds ${mib} MiB, more than the ${LIMIT_MIB} MiB one call to the GPU machine may carry" >&2
  exit 1
fi
