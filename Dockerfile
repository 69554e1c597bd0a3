# syntax=docker/dockerfile:1
# Image for the queue-worker service: the Copilot Worker Service (copilot/queue-worker/manifest.yml)
# and the CloudFormation / CDK stacks in deploy/.

# ---- builder ---------------------------------------------------------------
# Debian bookworm, like the runtime image below, so the glibc the binary links
# against is the one it runs with. The slim image ships gcc and libc6-dev, which
# the C part of the TLS stack (ring) needs.
FROM rust:1.95-slim-bookworm AS builder
WORKDIR /build

# Dependency layer: build every dependency against placeholder sources, so that
# a change under src/ does not rebuild the whole dependency tree. The workspace's
# test kit (crates/testkit) is a dev-dependency only: its manifest is needed to
# load the workspace, but none of its code is copied or built.
COPY Cargo.toml Cargo.lock ./
COPY crates/testkit/Cargo.toml crates/testkit/
RUN mkdir src crates/testkit/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs crates/testkit/src/lib.rs \
    && cargo build --release --locked --bin queue-worker \
    && rm -rf src \
        target/release/queue-worker* \
        target/release/deps/queue_worker-* \
        target/release/deps/libqueue_worker-* \
        target/release/.fingerprint/queue-worker-*

# The real sources. COPY keeps the files' modification times, which can be older
# than the placeholder build; the fingerprints removed above and the touch make
# cargo rebuild the crate anyway.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin queue-worker

# ---- runtime ---------------------------------------------------------------
# distroless/cc: glibc, libgcc_s and CA certificates, no shell and no package
# manager. scripts/check-ldd.sh checks the binary needs nothing else.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /build/target/release/queue-worker /usr/local/bin/queue-worker
# distroless's "nonroot" user, given numerically so the runtime can check it is
# not root without reading /etc/passwd (the base image already runs as it).
USER 65532:65532
# ECS sends SIGTERM, then SIGKILL after the container's StopTimeout (60 s, set in
# the manifest); the worker drains within WORKER_SHUTDOWN_TIMEOUT (25 s).
STOPSIGNAL SIGTERM
# /health and /metrics on loopback only, so that the health check below works in the image as it
# is (ECS, Copilot and the CloudFormation stack set the same value). Nothing outside the
# container can reach it.
ENV WORKER_METRICS_ADDR=127.0.0.1:9090
# Exec form: distroless has no shell. `health` asks the worker's /health on WORKER_METRICS_ADDR
# and exits 0 only when it is healthy. The same settings as the Copilot manifest's
# image.healthcheck and the task definitions in deploy/ (which override this one on ECS).
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/queue-worker", "health"]
ENTRYPOINT ["/usr/local/bin/queue-worker"]
CMD ["run"]
