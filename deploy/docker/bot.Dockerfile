# syntax=docker/dockerfile:1
# Your bot's image, from a crate of its own that depends on tgpipe and tgpipe-worker.
# Copy this file beside your crate. The build context holds your crate and a tgpipe
# checkout, as your Cargo.toml's path dependencies expect (docs/deploy.md):
#   bots/                  the build context
#     tgpipe/              git clone of tgpipe
#     my-bot/              Cargo.toml (tgpipe = { path = "../tgpipe/framework" }), Cargo.lock
#   docker build -f my-bot/bot.Dockerfile --build-arg BOT_DIR=my-bot --build-arg BOT_BIN=my-bot \
#     -t registry.example.com/me/my-bot:1.4.2 .
# With versioned dependencies instead of paths, the context is your crate alone (BOT_DIR=.).

ARG BOT_DIR=.
ARG BOT_BIN=bot
# dev builds in target/debug, any other profile in target/<profile>.
ARG PROFILE=release

FROM rust:1.95-slim-bookworm AS build
ARG BOT_DIR
ARG BOT_BIN
ARG PROFILE
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --profile "${PROFILE}" --manifest-path "${BOT_DIR}/Cargo.toml" \
      --target-dir /src/target --bin "${BOT_BIN}" \
 && out="${PROFILE}" && if [ "${PROFILE}" = dev ]; then out=debug; fi \
 && install -D -m 0755 "/src/target/${out}/${BOT_BIN}" /out/bot

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
# The same binary answers `run`, `provision`, `webhook ...` and `dlq ...`; the chart
# runs it as `bot` (set `worker.command: bot`), so this path is the contract.
COPY --from=build /out/bot /usr/local/bin/bot
EXPOSE 9090
USER 65532:65532
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/bot"]
CMD ["run"]
