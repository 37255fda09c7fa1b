# syntax=docker/dockerfile:1
# tgpipe-ingress: build with the workspace's locked dependencies, run on distroless as
# a non-root user. Build from the repository root:
#   docker build -f deploy/docker/ingress.Dockerfile -t tgpipe/tgpipe-ingress .

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tgpipe-ingress --bin tgpipe-ingress \
 && install -D -m 0755 target/release/tgpipe-ingress /out/tgpipe-ingress

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/tgpipe-ingress /usr/local/bin/tgpipe-ingress
# 8080: the webhook; 9091: /healthz, /readyz (Kubernetes probes them; no HEALTHCHECK
# here) and /metrics.
EXPOSE 8080 9091
USER 65532:65532
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tgpipe-ingress"]
CMD ["serve"]
