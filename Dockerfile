# syntax=docker/dockerfile:1
# tokengate container image: a locked release build, run as a non-root numeric user on a
# minimal base (glibc and CA certificates only; no shell, no package manager).
#   docker build -t tokengate:dev .

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Declared targets must exist for cargo to read the manifest.
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tokengate \
 && cp target/release/tokengate /tokengate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /tokengate /tokengate
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["/tokengate"]
CMD ["serve", "--help"]
