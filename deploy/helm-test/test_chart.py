"""Asserts the rendered chart: lanes, autoscaling, secrets, hardening, policies, hooks."""

import json

import pytest

from conftest import CHART, RenderError, by_kind, containers, env, named, pod_spec, render

BOTS = {"bots.list[0].id": "111", "bots.list[0].secret": "topsecret-value", "bots.list[0].token": "111:TOKENvalue"}


def test_two_lanes_become_two_deployments_with_their_replicas_and_kinds(ci_dir):
    objs = render(ci_dir / "two-lanes-hpa.yaml")
    messages = named(objs, "Deployment", "t-tgpipe-worker-messages")
    inline = named(objs, "Deployment", "t-tgpipe-worker-inline")
    # Autoscaled lanes leave replicas to their HPA.
    assert "replicas" not in messages["spec"] and "replicas" not in inline["spec"]
    e = env(messages["spec"]["template"]["spec"]["containers"][0])
    assert e["TGPIPE_LANE"] == "messages"
    assert e["TGPIPE_LANE_KINDS"] == "message,edited_message,callback_query,timer"
    assert e["TGPIPE_CONCURRENCY"] == "128"
    assert env(inline["spec"]["template"]["spec"]["containers"][0])["TGPIPE_LANE_KINDS"] == "inline_query"
    # Each lane's pods are selected by its own label, so the Deployments never fight.
    assert messages["spec"]["selector"]["matchLabels"]["tgpipe.dev/lane"] == "messages"
    assert inline["spec"]["selector"]["matchLabels"]["tgpipe.dev/lane"] == "inline"
    # Per-lane resources override the default.
    assert inline["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "50m"


def test_each_autoscaled_lane_gets_its_own_hpa(ci_dir):
    objs = render(ci_dir / "two-lanes-hpa.yaml")
    hpas = {h["metadata"]["name"]: h for h in by_kind(objs, "HorizontalPodAutoscaler")}
    assert set(hpas) == {"t-tgpipe-ingress", "t-tgpipe-worker-messages", "t-tgpipe-worker-inline"}
    m = hpas["t-tgpipe-worker-messages"]["spec"]
    assert (m["minReplicas"], m["maxReplicas"]) == (3, 12)
    assert m["scaleTargetRef"]["name"] == "t-tgpipe-worker-messages"
    c = hpas["t-tgpipe-worker-inline"]["spec"]
    assert (c["minReplicas"], c["maxReplicas"]) == (1, 4)


def test_fixed_lanes_keep_their_replicas_and_have_no_autoscaler():
    objs = render(sets=BOTS)
    assert by_kind(objs, "HorizontalPodAutoscaler") == []
    assert named(objs, "Deployment", "t-tgpipe-worker-messages")["spec"]["replicas"] == 2
    assert named(objs, "Deployment", "t-tgpipe-worker-inline")["spec"]["replicas"] == 1
    assert named(objs, "Deployment", "t-tgpipe-ingress")["spec"]["replicas"] == 2


def test_keda_scales_lanes_on_the_lag_workers_report_not_on_consumer_lane_name(ci_dir):
    # The trigger named consumer "<lane>", which never existed (the runtime's consumers
    # are tgpipe-lane-<lane>-p<partition>, one per partition): lag autoscaling never saw
    # lag. It now sums the pending count every pod reports for its partitions.
    objs = render(ci_dir / "keda.yaml")
    assert by_kind(objs, "HorizontalPodAutoscaler") == []
    so = named(objs, "ScaledObject", "t-tgpipe-worker-all")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    trigger = so["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["serverAddress"] == "http://prometheus-operated.monitoring.svc:9090"
    assert trigger["metadata"]["query"] == 'sum(tgpipe_worker_consumer_pending{lane="all",namespace="default"})'
    assert trigger["metadata"]["threshold"] == "50"
    assert "consumer" not in trigger["metadata"]
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (2, 20)
    monitors = by_kind(objs, "ServiceMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {"t-tgpipe-ingress", "t-tgpipe-worker"}
    assert all(m["metadata"]["labels"]["release"] == "prometheus" for m in monitors)


def test_keda_needs_a_prometheus_server_address(ci_dir):
    with pytest.raises(RenderError, match="serverAddress"):
        render(ci_dir / "keda.yaml", sets={"keda.prometheus.serverAddress": ""})


def test_secrets_never_appear_outside_the_secret():
    objs = render(sets=BOTS)
    secret = named(objs, "Secret", "t-tgpipe-bots")
    assert secret["stringData"] == {"bots": "111:topsecret-value", "tokens": "111:TOKENvalue"}
    for o in objs:
        if o["kind"] == "Secret":
            continue
        text = json.dumps(o)
        assert "topsecret-value" not in text, o["metadata"]["name"]
        assert "TOKENvalue" not in text, o["metadata"]["name"]


def test_existing_secret_is_used_and_none_is_created(ci_dir):
    objs = render(ci_dir / "existing-secret-tls.yaml")
    assert by_kind(objs, "Secret") == []
    for kind, name in [("Deployment", "t-tgpipe-ingress"), ("Deployment", "t-tgpipe-worker-messages"), ("Job", "t-tgpipe-provision")]:
        vols = pod_spec(named(objs, kind, name))["volumes"]
        assert any(v.get("secret", {}).get("secretName") == "my-bot-secrets" for v in vols), name


def test_config_changes_roll_the_pods():
    a = named(render(sets=BOTS), "Deployment", "t-tgpipe-ingress")
    b = named(render(sets=dict(BOTS, **{"bots.list[0].secret": "rotated"})), "Deployment", "t-tgpipe-ingress")
    key = "checksum/bots"
    assert a["spec"]["template"]["metadata"]["annotations"][key] != b["spec"]["template"]["metadata"]["annotations"][key]


@pytest.mark.parametrize("values", [None, "two-lanes-hpa.yaml", "keda.yaml", "existing-secret-tls.yaml", "minimal.yaml"])
def test_every_container_is_hardened_and_has_resources(ci_dir, values):
    objs = render(ci_dir / values) if values else render(sets=BOTS)
    workloads = by_kind(objs, "Deployment") + by_kind(objs, "Job")
    assert workloads
    for w in workloads:
        spec = pod_spec(w)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        for c in containers(w):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (w["metadata"]["name"], c["name"])
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"] and c["resources"]["limits"], (w["metadata"]["name"], c["name"])


def test_probes_and_drain_time():
    objs = render(sets=BOTS)
    # The ingress's probes are on its ops port; the webhook port serves only webhooks.
    for name, probe_port, grace in [("t-tgpipe-ingress", "ops", 35), ("t-tgpipe-worker-messages", "http", 75)]:
        d = named(objs, "Deployment", name)
        c = d["spec"]["template"]["spec"]["containers"][0]
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": probe_port}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": probe_port}
        assert probe_port in {p["name"] for p in c["ports"]}
        # The pod outlives the process's drain delay and grace period.
        assert d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == grace
        assert d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    ingress = named(objs, "Deployment", "t-tgpipe-ingress")["spec"]["template"]["spec"]["containers"][0]
    e = env(ingress)
    assert (e["TGPIPE_DRAIN_DELAY"], e["TGPIPE_SHUTDOWN_GRACE"]) == ("5s", "25s")
    # Removed from the Service within the drain delay: failureThreshold x periodSeconds.
    probe = ingress["readinessProbe"]
    assert probe["failureThreshold"] * probe["periodSeconds"] < 5


def test_worker_termination_grace_covers_the_handler_timeout_and_the_drain():
    # Kubernetes must not kill a worker whose handler is still allowed to run: the pod's
    # grace covers the drain, and the drain covers the handler timeout.
    objs = render(sets=dict(BOTS, **{"worker.handlerTimeoutSeconds": "30", "worker.shutdownGraceSeconds": "40"}))
    d = named(objs, "Deployment", "t-tgpipe-worker-messages")
    e = env(d["spec"]["template"]["spec"]["containers"][0])
    assert (e["TGPIPE_HANDLER_TIMEOUT"], e["TGPIPE_SHUTDOWN_GRACE"]) == ("30s", "40s")
    assert d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 45
    with pytest.raises(RenderError, match="handlerTimeoutSeconds"):
        render(sets=dict(BOTS, **{"worker.handlerTimeoutSeconds": "60", "worker.shutdownGraceSeconds": "25"}))


def test_the_album_quiet_time_reaches_every_lane_and_a_malformed_one_is_refused():
    objs = render(sets=BOTS)
    e = env(named(objs, "Deployment", "t-tgpipe-worker-messages")["spec"]["template"]["spec"]["containers"][0])
    assert e["TGPIPE_ALBUM_QUIET"] == "1s"
    objs = render(sets=dict(BOTS, **{"worker.albumQuiet": "250ms"}))
    e = env(named(objs, "Deployment", "t-tgpipe-worker-messages")["spec"]["template"]["spec"]["containers"][0])
    assert e["TGPIPE_ALBUM_QUIET"] == "250ms"
    with pytest.raises(RenderError, match="albumQuiet"):
        render(sets=dict(BOTS, **{"worker.albumQuiet": "a second"}))


def test_the_webhook_watchdog_gets_the_static_bots_url_and_secrets_when_there_is_a_public_url():
    objs = render(sets=BOTS)
    d = named(objs, "Deployment", "t-tgpipe-worker-messages")
    e = env(d["spec"]["template"]["spec"]["containers"][0])
    assert e["TGPIPE_WEBHOOK_CHECK_INTERVAL"] == "60s"
    assert "TGPIPE_WEBHOOK_URL" not in e and "TGPIPE_BOTS_FILE" not in e
    objs = render(sets=dict(BOTS, **{"provision.publicUrl": "https://bot.example.org", "worker.webhookCheckSeconds": "0"}))
    spec = named(objs, "Deployment", "t-tgpipe-worker-messages")["spec"]["template"]["spec"]
    e = env(spec["containers"][0])
    assert (e["TGPIPE_WEBHOOK_CHECK_INTERVAL"], e["TGPIPE_WEBHOOK_URL"]) == ("0s", "https://bot.example.org")
    assert e["TGPIPE_BOTS_FILE"] == "/etc/tgpipe/bots/bots"
    items = {i["key"] for v in spec["volumes"] if v["name"] == "bots" for i in v["secret"]["items"]}
    assert items == {"tokens", "bots"}


def test_metrics_are_scraped_from_the_ingress_ops_port_not_the_webhook_port():
    objs = render(sets=dict(BOTS, **{"metrics.serviceMonitor.enabled": "true"}))
    monitor = named(objs, "ServiceMonitor", "t-tgpipe-ingress")
    assert monitor["spec"]["endpoints"][0]["port"] == "ops"
    service = named(objs, "Service", "t-tgpipe-ingress")
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {"http": "http", "ops": "ops"}


def lanes_file(tmp_path, lanes):
    """A values file with these lanes (``--set`` would replace whole lists)."""
    path = tmp_path / "lanes.yaml"
    bots = [{"id": 111, "secret": "lanes-secret", "token": "111:lanes-token"}]
    path.write_text(json.dumps({"bots": {"list": bots}, "worker": {"lanes": lanes}}))
    return path


def test_overlapping_lanes_fail_to_render(tmp_path):
    lanes = [{"name": "a", "updateTypes": ["message", "poll"]}, {"name": "b", "updateTypes": ["poll"]}]
    with pytest.raises(RenderError, match='"poll" is in lanes "a" and "b"; lanes must not overlap'):
        render(lanes_file(tmp_path, lanes))


def test_bad_lanes_fail_to_render(tmp_path):
    # Caught by values.schema.json before any template runs.
    with pytest.raises(RenderError, match="updateTypes/0"):
        render(lanes_file(tmp_path, [{"name": "a", "updateTypes": ["mesage"]}]))
    with pytest.raises(RenderError, match="name"):
        render(lanes_file(tmp_path, [{"name": "Not_A_Label", "updateTypes": []}]))
    # Caught by the chart's own validation (the schema cannot see across lanes).
    with pytest.raises(RenderError, match="cannot share the stream"):
        render(lanes_file(tmp_path, [{"name": "all", "updateTypes": []}, {"name": "b", "updateTypes": ["poll"]}]))
    with pytest.raises(RenderError, match="listed twice"):
        render(lanes_file(tmp_path, [{"name": "a", "updateTypes": ["poll"]}, {"name": "a", "updateTypes": ["message"]}]))


def test_no_bots_fail_to_render_without_the_registry():
    # An empty Secret would start pods that refuse it and crash-loop.
    with pytest.raises(RenderError, match="bots.list is empty"):
        render(sets={"registry.enabled": "false"})


def test_a_registry_only_install_renders_an_empty_bot_list():
    # A platform's bots all come from the registry: the pods start with no static bot
    # (test_contract.py runs them with ci/registry-only.yaml).
    secret = by_kind(render(), "Secret")[0]
    assert secret["stringData"] == {"bots": "", "tokens": ""}


def test_set_webhook_needs_a_public_url():
    with pytest.raises(RenderError, match="publicUrl"):
        render(sets=dict(BOTS, **{"provision.setWebhook": "true"}))


def test_network_policies():
    objs = render(sets=BOTS)
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(objs, "NetworkPolicy")}
    ingress = policies["t-tgpipe-ingress"]
    sources = ingress["ingress"][0]["from"]
    assert sources[0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ingress-nginx"}
    worker = policies["t-tgpipe-worker"]
    ports = sorted(p["port"] for rule in worker["egress"] for p in rule["ports"])
    assert ports == [53, 53, 443, 4222, 6379]
    assert not any(p["port"] == 6379 for rule in ingress["egress"] for p in rule["ports"]), "ingress never talks to Redis"
    assert by_kind(render(CHART / "ci" / "minimal.yaml"), "NetworkPolicy") == []


def test_provisioning_job_is_a_hook_that_creates_streams_then_consumers(ci_dir):
    objs = render(ci_dir / "existing-secret-tls.yaml")
    job = named(objs, "Job", "t-tgpipe-provision")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    spec = pod_spec(job)
    assert spec["initContainers"][0]["args"] == ["provision"]
    names = [c["name"] for c in spec["containers"]]
    assert names[:3] == ["consumer-messages", "consumer-inline", "consumer-other"]
    webhook = [c for c in spec["containers"] if c["name"] == "webhook-333"][0]
    assert webhook["args"][:4] == ["webhook", "set", "--bot-id", "333"]
    assert "https://bot.example.org/webhook/333" in webhook["args"]
    # Secrets reach it as files, never as arguments.
    assert env(webhook)["TGPIPE_BOTS_FILE"] == "/etc/tgpipe/bots/bots"
    assert by_kind(render(ci_dir / "minimal.yaml"), "Job") == []


def test_public_ingress_with_cert_manager(ci_dir):
    ing = named(render(ci_dir / "existing-secret-tls.yaml"), "Ingress", "t-tgpipe")
    assert ing["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt-prod"
    assert ing["spec"]["tls"][0] == {"hosts": ["bot.example.org"], "secretName": "bot-example-org-tls"}
    path = ing["spec"]["rules"][0]["http"]["paths"][0]
    assert path["path"] == "/webhook/", "only the webhook is public, not probes or metrics"


def test_pod_disruption_budgets_per_lane():
    objs = render(sets=BOTS)
    names = {p["metadata"]["name"] for p in by_kind(objs, "PodDisruptionBudget")}
    assert names == {"t-tgpipe-ingress", "t-tgpipe-worker-messages", "t-tgpipe-worker-inline", "t-tgpipe-worker-other"}


def test_schema_rejects_unknown_values():
    with pytest.raises(RenderError):
        render(sets={"ingress.nonsense": "1"})
    with pytest.raises(RenderError):
        render(sets={"bots.list[0].id": "1", "bots.list[0].secret": "has space", "bots.list[0].token": "1:x"})


def test_max_body_renders_as_digits_not_1_048576e06():
    # values.yaml's 1048576 reached the template as a float64 and `quote` printed
    # "1.048576e+06": the ingress refused it and every default install crash-looped.
    ingress = named(render(sets=BOTS), "Deployment", "t-tgpipe-ingress")
    assert env(ingress["spec"]["template"]["spec"]["containers"][0])["TGPIPE_MAX_BODY"] == "1048576"


def test_large_numbers_from_values_files_render_as_digits(tmp_path):
    # A real bot id has ten digits, a 30-day FSM TTL seven: from a values file both are
    # float64, which `quote` and `%v` print in exponent form.
    values = tmp_path / "big.yaml"
    values.write_text(
        json.dumps(
            {
                "bots": {"list": [{"id": 7123456789, "secret": "big-secret", "token": "7123456789:AAbig"}]},
                "ingress": {"maxBody": 4194304, "shards": 1024},
                "worker": {"fsmTtlSeconds": 2592000, "maxDeliver": 1000000},
                "provision": {"setWebhook": True, "publicUrl": "https://bot.example.org", "maxConnections": 100},
            }
        )
    )
    objs = render(values)
    assert named(objs, "Secret", "t-tgpipe-bots")["stringData"]["bots"] == "7123456789:big-secret"
    e = env(named(objs, "Deployment", "t-tgpipe-ingress")["spec"]["template"]["spec"]["containers"][0])
    assert (e["TGPIPE_MAX_BODY"], e["TGPIPE_SHARDS"]) == ("4194304", "1024")
    w = env(named(objs, "Deployment", "t-tgpipe-worker-messages")["spec"]["template"]["spec"]["containers"][0])
    assert (w["TGPIPE_FSM_TTL"], w["TGPIPE_MAX_DELIVER"]) == ("2592000s", "1000000")
    job = pod_spec(named(objs, "Job", "t-tgpipe-provision"))
    hook = [c for c in job["containers"] if c["name"] == "webhook-7123456789"][0]
    assert "https://bot.example.org/webhook/7123456789" in hook["args"]
    for o in objs:
        text = json.dumps(o)
        assert "e+0" not in text, (o["kind"], o["metadata"]["name"])


def egress_allows(policy, ns_labels, pod_labels, ip, port):
    """Whether a NetworkPolicy's egress rules let its pods reach this destination."""
    import ipaddress

    def matches(selector, labels):
        return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())

    for rule in policy["egress"]:
        if not any(p["port"] == port for p in rule.get("ports", [])):
            continue
        for peer in rule["to"]:
            if "ipBlock" in peer and ipaddress.ip_address(ip) in ipaddress.ip_network(peer["ipBlock"]["cidr"]):
                return True
            if "podSelector" in peer or "namespaceSelector" in peer:
                # A peer without namespaceSelector means the policy's own namespace.
                ns_ok = matches(peer["namespaceSelector"], ns_labels) if "namespaceSelector" in peer else ns_labels["kubernetes.io/metadata.name"] == "bots"
                if ns_ok and matches(peer.get("podSelector", {}), pod_labels):
                    return True
    return False


def test_network_policy_allows_nats_and_redis_of_the_documented_install_in_other_namespaces():
    # docs/deploy.md installs with nats://nats.messaging and redis://redis.cache, but the
    # policy allowed NATS and Redis only in the release's own namespace.
    objs = render(sets=BOTS)
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(objs, "NetworkPolicy")}
    nats = ({"kubernetes.io/metadata.name": "messaging"}, {"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": "nats"}, "10.1.2.3", 4222)
    redis = ({"kubernetes.io/metadata.name": "cache"}, {"app.kubernetes.io/name": "redis", "app.kubernetes.io/component": "master"}, "10.1.2.4", 6379)
    same_ns_nats = ({"kubernetes.io/metadata.name": "bots"}, {"app.kubernetes.io/name": "nats"}, "10.1.2.5", 4222)
    for name in ["t-tgpipe-ingress", "t-tgpipe-worker", "t-tgpipe-provision"]:
        assert egress_allows(policies[name], *nats), name
        assert egress_allows(policies[name], *same_ns_nats), name
    assert egress_allows(policies["t-tgpipe-worker"], *redis)
    assert not egress_allows(policies["t-tgpipe-ingress"], *redis)
    # Something else in those namespaces stays out of reach.
    assert not egress_allows(policies["t-tgpipe-worker"], {"kubernetes.io/metadata.name": "cache"}, {"app": "other"}, "10.1.2.6", 6379)


def test_network_policy_narrowed_to_namespaces_and_cidrs(tmp_path):
    values = tmp_path / "np.yaml"
    values.write_text(json.dumps({"networkPolicy": {
        "nats": {"namespaceSelector": {"kubernetes.io/metadata.name": "messaging"}, "cidrs": ["192.0.2.0/24"]},
        "redis": {"podSelector": None, "cidrs": ["198.51.100.7/32"], "port": 6380},
    }}))
    objs = render(values, sets=BOTS)
    worker = named(objs, "NetworkPolicy", "t-tgpipe-worker")["spec"]
    assert egress_allows(worker, {"kubernetes.io/metadata.name": "messaging"}, {"app.kubernetes.io/name": "nats"}, "10.0.0.1", 4222)
    assert not egress_allows(worker, {"kubernetes.io/metadata.name": "other"}, {"app.kubernetes.io/name": "nats"}, "10.0.0.1", 4222)
    assert egress_allows(worker, {"kubernetes.io/metadata.name": "x"}, {}, "192.0.2.9", 4222)
    assert egress_allows(worker, {"kubernetes.io/metadata.name": "x"}, {}, "198.51.100.7", 6380)
    assert not egress_allows(worker, {"kubernetes.io/metadata.name": "x"}, {"app.kubernetes.io/name": "redis"}, "10.0.0.2", 6380)


def test_network_policy_lets_traces_reach_the_collector_only_when_exported(tmp_path):
    # With otlpEndpoint set, the default-deny egress dropped every span export.
    collector = ({"kubernetes.io/metadata.name": "monitoring"}, {"app.kubernetes.io/component": "opentelemetry-collector"}, "10.1.2.7", 4318)
    objs = render(sets=BOTS)
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(objs, "NetworkPolicy")}
    for name in ["t-tgpipe-ingress", "t-tgpipe-worker"]:
        assert not egress_allows(policies[name], *collector), name
    objs = render(sets={**BOTS, "otlpEndpoint": "http://otel-collector.monitoring:4318"})
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(objs, "NetworkPolicy")}
    for name in ["t-tgpipe-ingress", "t-tgpipe-worker"]:
        assert egress_allows(policies[name], *collector), name
        assert not egress_allows(policies[name], {"kubernetes.io/metadata.name": "monitoring"}, {"app": "other"}, "10.1.2.8", 4318), name
    assert not egress_allows(policies["t-tgpipe-provision"], *collector)
    # A collector outside the cluster, by CIDR.
    values = tmp_path / "otel.yaml"
    values.write_text(json.dumps({"otlpEndpoint": "http://203.0.113.5:4318", "networkPolicy": {"otelCollector": {"podSelector": None, "cidrs": ["203.0.113.5/32"]}}}))
    worker = named(render(values, sets=BOTS), "NetworkPolicy", "t-tgpipe-worker")["spec"]
    assert egress_allows(worker, {"kubernetes.io/metadata.name": "x"}, {}, "203.0.113.5", 4318)


def test_the_registry_settings_reach_every_binary(tmp_path):
    def first_env(objs, component):
        deps = [d for d in by_kind(objs, "Deployment") if d["metadata"]["labels"].get("app.kubernetes.io/component") == component]
        assert deps, component
        return env(deps[0]["spec"]["template"]["spec"]["containers"][0])

    objs = render(sets=BOTS)
    for component in ["ingress", "worker"]:
        e = first_env(objs, component)
        assert (e["TGPIPE_REGISTRY"], e["TGPIPE_REGISTRY_BUCKET"]) == ("true", "tgpipe_bots"), component
    assert first_env(objs, "worker")["TGPIPE_REMOVED_POLICY"] == "dead-letter"
    jobs = by_kind(objs, "Job")
    assert jobs
    for job in jobs:
        for c in containers(job):
            assert env(c)["TGPIPE_REGISTRY_BUCKET"] == "tgpipe_bots", c["name"]
    values = tmp_path / "registry.yaml"
    values.write_text(json.dumps({"registry": {"enabled": False, "bucket": "bots_prod", "removedPolicy": "drain"}}))
    e = first_env(render(values, sets=BOTS), "worker")
    assert (e["TGPIPE_REGISTRY"], e["TGPIPE_REGISTRY_BUCKET"], e["TGPIPE_REMOVED_POLICY"]) == ("false", "bots_prod", "drain")
    values.write_text(json.dumps({"registry": {"removedPolicy": "forget"}}))
    with pytest.raises(RenderError):
        render(values, sets=BOTS)


def test_workers_get_the_ingress_shard_count_and_their_partitions(tmp_path):
    # The worker's TGPIPE_SHARDS defaulted to 64 whatever ingress.shards said.
    values = tmp_path / "shards.yaml"
    values.write_text(json.dumps({"ingress": {"shards": 32}, "worker": {"partitions": 8, "lanes": [
        {"name": "a", "updateTypes": ["message"]}, {"name": "b", "updateTypes": ["poll"], "partitions": 4}]}}))
    objs = render(values, sets=BOTS)
    a = env(named(objs, "Deployment", "t-tgpipe-worker-a")["spec"]["template"]["spec"]["containers"][0])
    b = env(named(objs, "Deployment", "t-tgpipe-worker-b")["spec"]["template"]["spec"]["containers"][0])
    assert (a["TGPIPE_SHARDS"], a["TGPIPE_PARTITIONS"]) == ("32", "8")
    assert (b["TGPIPE_SHARDS"], b["TGPIPE_PARTITIONS"]) == ("32", "4")
    job = pod_spec(named(objs, "Job", "t-tgpipe-provision"))
    assert env([c for c in job["containers"] if c["name"] == "consumer-a"][0])["TGPIPE_PARTITIONS"] == "8"
    # By default, one partition per shard.
    values.write_text(json.dumps({"ingress": {"shards": 32}, "worker": {"lanes": [{"name": "a", "updateTypes": []}]}}))
    assert env(named(render(values, sets=BOTS), "Deployment", "t-tgpipe-worker-a")["spec"]["template"]["spec"]["containers"][0])["TGPIPE_PARTITIONS"] == "32"
    values.write_text(json.dumps({"worker": {"lanes": [{"name": "a", "updateTypes": []}]}}))
    assert env(named(render(values, sets=BOTS), "Deployment", "t-tgpipe-worker-a")["spec"]["template"]["spec"]["containers"][0])["TGPIPE_PARTITIONS"] == "64"
    with pytest.raises(RenderError, match="lane \"a\" has 64 partitions but there are only 32 shards"):
        values.write_text(json.dumps({"ingress": {"shards": 32}, "worker": {"partitions": 64, "lanes": [{"name": "a", "updateTypes": []}]}}))
        render(values, sets=BOTS)


def images(objs):
    """Container name -> image, over every Deployment and Job."""
    return {f"{o['metadata']['name']}.{c['name']}": c["image"] for kind in ("Deployment", "Job") for o in by_kind(objs, kind) for c in containers(o)}


def test_one_registry_and_tag_for_both_images_is_gone_each_image_has_its_own():
    # `worker.image.repository=me/newbot` used to render ghcr.io/me/newbot:<appVersion>:
    # the worker's registry and tag could not be set without moving the ingress's too.
    objs = render(sets={**BOTS, "worker.image.registry": "registry.example.com",
                        "worker.image.repository": "me/newbot", "worker.image.tag": "1.4.2"})
    found = images(objs)
    app = yaml_chart()["appVersion"]
    assert found["t-tgpipe-worker-messages.worker"] == "registry.example.com/me/newbot:1.4.2"
    assert found["t-tgpipe-ingress.ingress"] == f"ghcr.io/tgpipe/tgpipe-ingress:{app}"
    # The provisioning Job runs both images: each keeps its own.
    job = {k: v for k, v in found.items() if k.startswith("t-tgpipe-provision.")}
    assert job["t-tgpipe-provision.streams"] == f"ghcr.io/tgpipe/tgpipe-ingress:{app}"
    assert set(job.values()) == {f"ghcr.io/tgpipe/tgpipe-ingress:{app}", "registry.example.com/me/newbot:1.4.2"}


def test_a_digest_pins_an_image_and_the_defaults_still_apply_to_the_other():
    digest = "sha256:" + "ab" * 32
    objs = render(sets={**BOTS, "ingress.image.digest": digest, "ingress.image.registry": "mirror.local",
                        "image.tag": "9.9.9"})
    found = images(objs)
    assert found["t-tgpipe-ingress.ingress"] == f"mirror.local/tgpipe/tgpipe-ingress@{digest}"
    assert found["t-tgpipe-worker-messages.worker"] == "ghcr.io/tgpipe/tgpipe-example-bot:9.9.9"
    with pytest.raises(RenderError):
        render(sets={**BOTS, "worker.image.digest": "latest"})


def test_default_lanes_split_message_and_callback_query_no_more():
    # docs/fsm.md: kinds whose handlers share FSM state belong to one lane (fencing is
    # per lane); the default lanes put `message` in one and `callback_query` in another.
    objs = render(sets=BOTS)
    lanes = {env(c)["TGPIPE_LANE"]: env(c)["TGPIPE_LANE_KINDS"].split(",") for d in by_kind(objs, "Deployment")
             for c in containers(d) if "TGPIPE_LANE" in env(c)}
    holding = [lane for lane, kinds in lanes.items() if {"message", "callback_query", "timer"} & set(kinds)]
    assert len(holding) == 1, lanes
    # Durable timers fire beside the conversations that schedule them (a form's timeout).
    assert {"message", "callback_query", "timer"} <= set(lanes[holding[0]])


def yaml_chart():
    import yaml

    return yaml.safe_load((CHART / "Chart.yaml").read_text())


def test_the_chart_trusted_10_0_0_0_8_as_proxies_by_default(ci_dir):
    # Any pod in 10.0.0.0/8 could name any client address in X-Forwarded-For and pass
    # the Telegram-range check. Now nothing is trusted unless the user names a range...
    ingress = named(render(sets=BOTS), "Deployment", "t-tgpipe-ingress")
    assert env(ingress["spec"]["template"]["spec"]["containers"][0])["TGPIPE_TRUSTED_PROXIES"] == ""
    # ... and behind the chart's own Ingress (a controller in front) the range is required.
    with pytest.raises(RenderError, match="ingress.http.enabled needs ingress.trustedProxies"):
        render(sets={**BOTS, "ingress.http.enabled": "true"})
    named_range = render(ci_dir / "existing-secret-tls.yaml")
    ingress = named(named_range, "Deployment", "t-tgpipe-ingress")
    assert env(ingress["spec"]["template"]["spec"]["containers"][0])["TGPIPE_TRUSTED_PROXIES"] == "10.244.0.0/16"
    assert named(named_range, "Ingress", "t-tgpipe")
