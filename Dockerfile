# syntax=docker/dockerfile:1
# DevGem's own image: the one `devgem` binary. Every Cloud Run service runs `devgem serve
# <function>` and the janitor job `devgem serve janitor --once` (terraform/run.tf); cloudbuild.yaml
# builds it and rolls it out.
#
# Local build: DOCKER_BUILDKIT=1 docker build -t devgem .

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie

# The full Rust image (gcc, make, perl): libsqlite3-sys and aws-lc-sys compile C code.
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
COPY . .
# The registry, git checkouts and target/ live in BuildKit cache mounts, so a rebuild on the same
# builder compiles only what changed; the binary is copied out of the cache in the same step.
# Its debug info (line tables, about 120 MiB) stays behind: a smaller image starts faster on
# Cloud Run, and backtraces still name the functions.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p devgem-cli --bin devgem \
    && install -D -m 0755 target/release/devgem /out/devgem \
    && strip --strip-debug /out/devgem

FROM debian:${DEBIAN_RELEASE}-slim
# git: the Source port fetches repositories with the git command. ca-certificates: TLS to Google
# APIs, git hosts and LLM providers (rustls reads the system roots). Debian package versions are
# not pinned: Debian replaces them with security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates git \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 devgem \
    && useradd --system --uid 10001 --gid devgem --create-home --home-dir /home/devgem \
        --shell /usr/sbin/nologin devgem
COPY --from=builder /out/devgem /usr/local/bin/devgem
USER 10001:10001
WORKDIR /home/devgem
ENV PORT=8080 \
    RUST_LOG=info
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/devgem"]
CMD ["--help"]
