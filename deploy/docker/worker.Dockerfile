# syntax=docker/dockerfile:1
# A bot of the tgpipe workspace, built on tgpipe and tgpipe-worker: by default the example
# bot (examples/bot). For a bot in the workspace, point BOT_PACKAGE and BOT_BIN at its
# package and binary. A bot in a crate of its own uses deploy/docker/bot.Dockerfile.
#   docker build -f deploy/docker/worker.Dockerfile -t tgpipe/tgpipe-example-bot .
#   docker build -f deploy/docker/worker.Dockerfile \
#     --build-arg BOT_PACKAGE=my-bot --build-arg BOT_BIN=my-bot -t me/my-bot .

ARG BOT_PACKAGE=tgpipe-example-bot
ARG BOT_BIN=tgpipe-example-bot

FROM rust:1.95-slim-bookworm AS build
ARG BOT_PACKAGE
ARG BOT_BIN
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p "${BOT_PACKAGE}" --bin "${BOT_BIN}" \
 && install -D -m 0755 "target/release/${BOT_BIN}" /out/bot

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG BOT_BIN
COPY --from=build /out/bot /usr/local/bin/${BOT_BIN}
# The same binary answers `run`, `provision`, `webhook ...` and `dlq ...`; the chart
# names it in `command`, so this path is the contract.
COPY --from=build /out/bot /usr/local/bin/bot
EXPOSE 9090
USER 65532:65532
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/bot"]
CMD ["run"]
