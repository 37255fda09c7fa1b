"""The PrometheusRule and the Grafana dashboard: promtool checks the rules and runs their
unit tests (alerts_test.yaml); the dashboard is valid JSON for Grafana's sidecar. That
their metric names are the binaries' is checked by test_contract.py against live /metrics."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import yaml

from conftest import by_kind, named, render

HERE = Path(__file__).parent
BOTS = {"bots.list[0].id": "111", "bots.list[0].secret": "alerts-secret", "bots.list[0].token": "111:alerts-token"}
PROMTOOL = os.environ.get("PROMTOOL", "promtool")


def rendered_rules():
    objs = render(sets=dict(BOTS, **{"metrics.prometheusRule.enabled": "true"}))
    return named(objs, "PrometheusRule", "t-tgpipe")["spec"]


def promtool(*args, cwd):
    proc = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_alert_rules_pass_promtool_check_and_their_unit_tests(tmp_path):
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rendered_rules()["groups"]}, sort_keys=False))
    shutil.copy(HERE / "alerts_test.yaml", tmp_path)
    assert "SUCCESS: 9 rules found" in promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yaml", cwd=tmp_path)


def test_every_alert_has_a_unit_test():
    alerts = {r["alert"] for g in rendered_rules()["groups"] for r in g["rules"]}
    assert alerts == {
        "TgpipeConsumerLagGrowing",
        "TgpipeDeadLetters",
        "TgpipeIngress503",
        "TgpipeWorkerNotReady",
        "TgpipeBotApi429",
        "TgpipeRebalanceStorm",
        "TgpipeWebhookPendingUpdates",
        "TgpipeWebhookDeliveryErrors",
        "TgpipeWebhookDrifted",
    }
    tests = yaml.safe_load((HERE / "alerts_test.yaml").read_text())["tests"]
    tested = {t["alertname"] for case in tests for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert alerts == tested, f"alerts without a firing test: {alerts - tested}"


def test_no_prometheus_rule_or_dashboard_unless_asked():
    objs = render(sets=BOTS)
    assert by_kind(objs, "PrometheusRule") == []
    assert by_kind(objs, "ConfigMap") == []


def test_grafana_dashboard_is_a_configmap_for_the_sidecar():
    objs = render(sets=dict(BOTS, **{"metrics.grafanaDashboard.enabled": "true"}))
    cm = named(objs, "ConfigMap", "t-tgpipe-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["tgpipe.json"])
    assert dash["uid"] == "tgpipe"
    titles = {p["title"] for p in dash["panels"]}
    for wanted in ["Webhook requests by status", "Lag per lane", "Outcomes", "Bot API calls by status"]:
        assert wanted in titles
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert variables == {"datasource", "namespace"}
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
        for t in p["targets"]:
            assert 'namespace="$namespace"' in t["expr"], (p["title"], t["expr"])


def test_dashboard_queries_are_valid_promql(tmp_path):
    # promtool parses recording rules: one per panel query, Grafana's variables filled in.
    objs = render(sets=dict(BOTS, **{"metrics.grafanaDashboard.enabled": "true"}))
    dash = json.loads(named(objs, "ConfigMap", "t-tgpipe-dashboard")["data"]["tgpipe.json"])
    rules = []
    for p in dash["panels"]:
        for t in p["targets"]:
            expr = t["expr"].replace("$__rate_interval", "5m").replace("$__range", "6h").replace("$namespace", "bots")
            rules.append({"record": f"dashboard:panel{p['id']}:{t['refId'].lower()}", "expr": expr})
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in promtool("check", "rules", "dashboard.yaml", cwd=tmp_path)
