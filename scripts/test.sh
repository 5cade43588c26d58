#!/usr/bin/env bash
# Sets up .venv if needed, then runs the test suite (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n 2 -q "$@"
