# One image with both Pier binaries, pier-controller and pier-dataplane, on a
# minimal base (glibc and CA certificates only, no shell), running as a
# non-root user. The Helm chart (charts/pier) picks the binary with `command`.
#
#   DOCKER_BUILDKIT=1 docker build -t pier:0.1.0 .
#
# Build arguments:
#   BUILD_IMAGE    a Debian image with Rust RUST_VERSION, cargo and a C compiler
#                  (gcc and make are installed with apt when missing)
#   RUNTIME_IMAGE  a base with glibc, libgcc, CA certificates and the user 65532
#   RUST_VERSION   must match rust-toolchain.toml
#   STRIP          debuginfo (default) or none
#
# Without a registry, e2e/scripts/image.sh makes both bases from Debian's
# packages and the host's toolchain and builds this file with them.

ARG RUST_VERSION=1.95.0
ARG DEBIAN_SUITE=bookworm
ARG BUILD_IMAGE=docker.io/library/rust:${RUST_VERSION}-slim-${DEBIAN_SUITE}
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---------------------------------------------------------------- build
FROM ${BUILD_IMAGE} AS build

# jemalloc (the dataplane's allocator) is built from source: it needs make
# and a C compiler; ring needs the C compiler too.
RUN if ! command -v cc >/dev/null || ! command -v make >/dev/null; then \
      apt-get update \
      && apt-get install -y --no-install-recommends make gcc libc6-dev \
      && rm -rf /var/lib/apt/lists/*; \
    fi

WORKDIR /src
COPY . .

# The image's toolchain is the one rust-toolchain.toml pins; naming it here
# keeps rustup from fetching the file's extra components (rustfmt, clippy).
# The cache mounts keep dependencies and build output between builds.
# STRIP=debuginfo drops the line tables (backtraces keep function names);
# STRIP=none keeps them, at about 80 MB more.
ARG RUST_VERSION
ARG STRIP=debuginfo
ENV RUSTUP_TOOLCHAIN=${RUST_VERSION}
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p pier-controller -p pier-dataplane \
      --config "profile.release.strip=\"${STRIP}\"" \
 && mkdir -p /out \
 && cp target/release/pier-controller target/release/pier-dataplane /out/

# ---------------------------------------------------------------- runtime
# glibc, libgcc, CA certificates, /etc/passwd with the "nonroot" user
# (65532); no shell, no package manager.
FROM ${RUNTIME_IMAGE}

COPY --from=build /out/pier-controller /out/pier-dataplane /usr/local/bin/

# Matches the chart's runAsUser/runAsGroup.
USER 65532:65532

# Dataplane: clients 8080, TLS 8443, admin 9901. Controller: snapshots 9443,
# admin 9902.
EXPOSE 8080 8443 9901 9443 9902

CMD ["pier-dataplane", "--help"]
