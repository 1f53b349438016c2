# syntax=docker/dockerfile:1
# tokengate container image: a locked, stripped release build, run as a non-root numeric user on
# a minimal base (glibc and CA certificates only; no shell, no package manager).
#   docker build -t tokengate:0.1.0 .
# The manifests run tokengate:<crate version> (registry-less); push it under your registry's
# name and set that in your overlay (docs/install.md, "Your own overlay").

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Declared targets must exist for cargo to read the manifest.
COPY benches ./benches
# Stripped here rather than in Cargo.toml, so local release builds keep symbols for profiling.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tokengate \
 && cp target/release/tokengate /tokengate

FROM gcr.io/distroless/cc-debian12:nonroot
# The crate version (kept equal to Cargo.toml's by tests/manifests.rs) and the commit built.
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="tokengate" \
      org.opencontainers.image.description="Kubernetes admission webhook that governs service-account token audiences and lifetimes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /tokengate /tokengate
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["/tokengate"]
CMD ["serve", "--help"]
