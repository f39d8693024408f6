# Image of the NFS subdirectory provisioner.
#
#   docker build -t <registry>/nfs-provisioner:<tag> .
#
# Stage 1 builds the release binary on Debian bookworm (glibc); stage 2 copies it alone into
# distroless/cc (glibc, libgcc, CA certificates; no shell, no package manager).

ARG RUST_IMAGE=rust:1-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12

FROM ${RUST_IMAGE} AS builder
WORKDIR /build

# Dependencies first, in their own layer: only the manifests and the lock file are copied, with
# empty crate roots, so editing the sources does not rebuild the dependency graph.
# (Every workspace member's manifest must be present, and every target Cargo.toml declares
# explicitly, such as the [[bench]], needs a stub file.)
COPY Cargo.toml Cargo.lock ./
COPY fake-apiserver/Cargo.toml fake-apiserver/Cargo.toml
RUN mkdir -p src fake-apiserver/src benches \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > benches/provisioning.rs \
 && touch src/lib.rs fake-apiserver/src/lib.rs \
 && cargo build --release --locked --package nfs-provisioner --bin nfs-provisioner \
 && rm -rf src

# The real sources. `touch` makes them newer than the stub build so cargo recompiles the crate
# (COPY keeps the build context's modification times, which may be older).
# (fake-apiserver is a test-only dev-dependency: its stub crate root above is all the release
# build needs.)
COPY src src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --package nfs-provisioner --bin nfs-provisioner \
 && cp target/release/nfs-provisioner /nfs-provisioner

FROM ${RUNTIME_IMAGE}
COPY --from=builder /nfs-provisioner /nfs-provisioner
# No USER: the image's default user is root, as the Deployment runs it by default
# (runAsUser: 0 with every capability dropped but CHOWN, FOWNER and DAC_OVERRIDE), so it can
# chown new directories to a configured uid/gid and manage directories whatever their owner.
# To run non-root, set runAsUser/runAsGroup in the pod's securityContext to the owner of the
# NFS export (deploy/README.md, "Root, root_squash and running as non-root"); the binary
# writes nothing outside the NFS mount, so any uid works with a read-only root file system.
# Admin endpoint: /healthz, /readyz, /metrics (ADMIN_ADDRESS, default :8080).
EXPOSE 8080
ENTRYPOINT ["/nfs-provisioner"]
