#!/usr/bin/env bash
# The one command that runs every test on a fresh machine: `bash tests/run_all.sh`.
# It installs what the tests need, then runs rustfmt, clippy (warnings denied) and all tests.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s ==\n' "$*"; }

step "toolchain"
if ! command -v cargo >/dev/null; then
    echo "cargo is required (https://rustup.rs)" >&2
    exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo --version

step "rustfmt"
cargo fmt --all -- --check

step "clippy"
cargo clippy --release --all-targets -- -D warnings

step "cargo test"
cargo test --release

echo
echo "all tests passed"
