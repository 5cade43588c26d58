#!/usr/bin/env bash
# Sets up .venv if needed, then runs the main job: robust federated training under attack
# (extra arguments go to `secrobust demo`, e.g. --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/secrobust demo "$@"
