#!/usr/bin/env bash
# Tools the deploy tests use beyond the Python dev dependencies: promtool (Debian package
# `prometheus`) for `promtool check rules|config` and `promtool test rules`.
# Idempotent: does nothing when promtool is already on PATH. Needs root (or sudo) and apt-get;
# without them it says so and exits 0, and the promtool tests skip.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
    echo "promtool present: $(promtool --version 2>&1 | head -n 1)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-tools: no apt-get here; install promtool by hand (the promtool tests skip)" >&2
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-tools: not root and no sudo; promtool not installed (the promtool tests skip)" >&2
        exit 0
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# --no-install-recommends: promtool only, no web UI assets or node exporter.
$SUDO apt-get install -y -q --no-install-recommends prometheus
# The package enables a Prometheus service; where systemd runs, keep it from listening.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    $SUDO systemctl disable --now prometheus || true
fi
echo "promtool installed: $(promtool --version 2>&1 | head -n 1)"
