#!/usr/bin/env bash
# Installs what the project needs beyond Rust, from the registries only. Idempotent.
# Today: nothing beyond the toolchain. cargo-nextest is used when present, else `cargo test`.
set -euo pipefail
command -v cargo >/dev/null || { echo "cargo is required (rustup.rs)" >&2; exit 1; }
command -v git >/dev/null || { echo "git is required" >&2; exit 1; }
