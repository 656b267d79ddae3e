# syntax=docker/dockerfile:1.7
#
# One image with both Pier binaries, pier-controller and pier-dataplane, on a
# minimal base (glibc and CA certificates only, no shell), running as a
# non-root user. The Helm chart (charts/pier) picks the binary with `command`.
#
#   docker build -t pier:0.1.0 .
#
# Build arguments: RUST_VERSION must match rust-toolchain.toml.

ARG RUST_VERSION=1.95.0
ARG DEBIAN_SUITE=bookworm

# ---------------------------------------------------------------- build
FROM docker.io/library/rust:${RUST_VERSION}-slim-${DEBIAN_SUITE} AS build

# jemalloc (the dataplane's allocator) is built from source: it needs make
# and a C compiler; ring needs the C compiler too.
RUN apt-get update \
 && apt-get install -y --no-install-recommends make gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# The image's toolchain is the one rust-toolchain.toml pins; naming it here
# keeps rustup from fetching the file's extra components (rustfmt, clippy).
# The cache mounts keep dependencies between builds.
ARG RUST_VERSION
ENV RUSTUP_TOOLCHAIN=${RUST_VERSION}
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p pier-controller -p pier-dataplane \
 && mkdir -p /out \
 && cp target/release/pier-controller target/release/pier-dataplane /out/

# ---------------------------------------------------------------- runtime
# distroless/cc: glibc, libgcc, CA certificates, /etc/passwd with the
# "nonroot" user (65532); no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot

COPY --from=build /out/pier-controller /out/pier-dataplane /usr/local/bin/

# Matches the chart's runAsUser/runAsGroup.
USER 65532:65532

# Dataplane: clients 8080, admin 9901. Controller: snapshots 9443, admin 9902.
EXPOSE 8080 9901 9443 9902

CMD ["pier-dataplane", "--help"]
