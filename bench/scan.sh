#!/usr/bin/env bash
# Scan benchmark (see bench/scan.py and bench/README.md). Extra arguments go to scan.py, e.g. --tokens 20000.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/diffsql-target}"
python3 -m pip install --quiet --disable-pip-version-check numpy pyarrow duckdb
cargo build --quiet --bin diffsql
python3 bench/scan.py --diffsql "$CARGO_TARGET_DIR/debug/diffsql" "$@"
