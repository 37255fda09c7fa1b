"""Renders the chart with helm (path in $HELM, set by run.sh) for the tests."""

import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "tgpipe"


class RenderError(Exception):
    """helm template failed; the message is helm's."""


def render(*values_files, sets=None):
    """Renders the chart; returns the list of objects."""
    helm = os.environ.get("HELM", "helm")
    cmd = [helm, "template", "t", str(CHART)]
    for f in values_files:
        cmd += ["-f", str(f)]
    for k, v in (sets or {}).items():
        cmd += ["--set", f"{k}={v}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RenderError(proc.stderr)
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def named(objs, kind, name):
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name} not rendered exactly once"
    return found[0]


def pod_spec(obj):
    if obj["kind"] == "Job":
        return obj["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def containers(obj):
    spec = pod_spec(obj)
    return spec.get("initContainers", []) + spec["containers"]


def env(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


@pytest.fixture
def ci_dir():
    return CHART / "ci"
