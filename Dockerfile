# syntax=docker/dockerfile:1
# Image of the NFS subdirectory provisioner: one statically linked binary on an empty base,
# running as uid/gid 65532 by default.
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t <registry>/nfs-provisioner:<tag> --push .
#   docker build -t <registry>/nfs-provisioner:<tag> .          (this machine's platform only)
#
# The builder stage always runs on the build machine's platform ($BUILDPLATFORM) and
# cross-compiles for $TARGETARCH with Debian's cross toolchain, so the arm64 image is built
# without emulating arm64 (and the other way round on an arm64 machine). The binary is glibc
# with crt-static: it needs no shared library, so the runtime stage is `scratch` and holds
# only what scripts/image-rootfs lays out (binary, CA bundle, passwd/group). Without Docker,
# scripts/build-image builds the same image with umoci (what CI does, for amd64 only: its
# machine has no aarch64 Rust target, so the arm64 cross build is not exercised there).

# Pinned by exact version and digest. The digest was not read from a registry (the machine
# this file was written on has none): it is the one public Dockerfiles pin this tag to (two
# unrelated ones agree). Check or update it, and that it is the multi-platform index (the
# builder runs on every build platform), with
#   docker buildx imagetools inspect rust:1.95.0-slim-bookworm
# or pass --build-arg RUST_IMAGE=... to build with another.
ARG RUST_IMAGE=docker.io/library/rust:1.95.0-slim-bookworm@sha256:d7482085ff5b415f84dba5647ae71606650bdef00db7aeb69f4b3d170c3e4082

FROM --platform=$BUILDPLATFORM ${RUST_IMAGE} AS builder
ARG TARGETARCH
ARG BUILDARCH
# The cross compiler and C library for the target (ring compiles C and assembly), and the
# Rust standard library for it; nothing extra for a native build. binutils: readelf, which
# scripts/build-static uses to refuse a dynamically linked result.
RUN set -eu; \
    case "$TARGETARCH" in \
      amd64) triple=x86_64-unknown-linux-gnu; cross="gcc-x86-64-linux-gnu libc6-dev-amd64-cross" ;; \
      arm64) triple=aarch64-unknown-linux-gnu; cross="gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;; \
      *) echo "unsupported TARGETARCH $TARGETARCH (amd64, arm64)" >&2; exit 1 ;; \
    esac; \
    packages=binutils; \
    if [ "$TARGETARCH" != "$BUILDARCH" ]; then packages="$packages $cross"; fi; \
    apt-get update; \
    apt-get install -y --no-install-recommends $packages; \
    rm -rf /var/lib/apt/lists/*; \
    rustup target add "$triple"
WORKDIR /build
COPY scripts/build-static scripts/image-rootfs scripts/

# Dependencies first, in their own layer: only the manifests and the lock file are copied, with
# empty crate roots, so editing the sources does not rebuild the dependency graph.
# (Every workspace member's manifest must be present, and every target Cargo.toml declares
# explicitly, such as the [[bench]], needs a stub file; fake-apiserver is a test-only
# dev-dependency, its stub crate root is all the release build needs.)
COPY Cargo.toml Cargo.lock ./
COPY fake-apiserver/Cargo.toml fake-apiserver/Cargo.toml
RUN mkdir -p src fake-apiserver/src benches \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > benches/provisioning.rs \
 && touch src/lib.rs fake-apiserver/src/lib.rs \
 && scripts/build-static "$TARGETARCH" \
 && rm -rf src

# The real sources. `touch` makes them newer than the stub build so cargo recompiles the crate
# (COPY keeps the build context's modification times, which may be older).
COPY src src
RUN touch src/main.rs src/lib.rs \
 && binary=$(scripts/build-static "$TARGETARCH") \
 && scripts/image-rootfs "$binary" /rootfs

FROM scratch
COPY --from=builder /rootfs/ /
# Numeric, so the kubelet can verify `runAsNonRoot: true` without reading /etc/passwd.
# deploy/base/deployment.yaml overrides it with runAsUser 0 (and three capabilities) for exports
# whose directories it must chown; deploy/restricted/ keeps it (PodSecurity restricted).
USER 65532:65532
# Admin endpoint: /healthz, /readyz, /metrics (ADMIN_ADDRESS, default :8080).
EXPOSE 8080
ENTRYPOINT ["/nfs-provisioner"]
