"""Parses the Dockerfiles: stages, non-root user, entrypoint, stop signal, no HEALTHCHECK."""

import json
import re

import pytest

from conftest import ROOT

DOCKER = ROOT / "deploy" / "docker"


def instructions(path):
    """(instruction, argument) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        if raw.strip().startswith("#") and not current:
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                lines.append((word.upper(), rest.strip()))
            current = ""
    return lines


@pytest.mark.parametrize("name,binary", [("ingress.Dockerfile", "tgpipe-ingress"), ("worker.Dockerfile", None), ("bot.Dockerfile", "bot")])
def test_dockerfile(name, binary):
    ins = instructions(DOCKER / name)
    froms = [arg for word, arg in ins if word == "FROM"]
    assert len(froms) == 2, "multi-stage: a build stage and a runtime stage"
    assert re.search(r"rust:1\.95\S* AS build$", froms[0])
    assert froms[1].endswith("AS runtime") and "distroless" in froms[1]
    runtime = ins[[i for i, (w, _) in enumerate(ins) if w == "FROM"][1]:]
    words = [w for w, _ in runtime]
    user = [a for w, a in runtime if w == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root"), "runs as non-root"
    assert ("STOPSIGNAL", "SIGTERM") in runtime
    assert "HEALTHCHECK" not in [w for w, _ in ins]
    entry = json.loads([a for w, a in runtime if w == "ENTRYPOINT"][-1])
    assert entry[0].startswith("/usr/local/bin/")
    if binary:
        assert entry == [f"/usr/local/bin/{binary}"]
    assert "--locked" in " ".join(a for w, a in ins if w == "RUN")
    assert "COPY" in words


def test_worker_dockerfile_builds_a_binary_the_workspace_has():
    """The default BOT_PACKAGE/BOT_BIN name a package of the workspace and its binary
    (the example bot moved to its own package, examples/bot, and the image must follow)."""
    import subprocess

    args = {}
    for word, arg in instructions(DOCKER / "worker.Dockerfile"):
        if word == "ARG" and "=" in arg:
            k, _, v = arg.partition("=")
            args[k] = v
    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps", "--locked"],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout)
    bins = {p["name"]: {t["name"] for t in p["targets"] if "bin" in t["kind"]} for p in meta["packages"]}
    assert args["BOT_PACKAGE"] in bins, f"no workspace package {args['BOT_PACKAGE']}"
    assert args["BOT_BIN"] in bins[args["BOT_PACKAGE"]], bins[args["BOT_PACKAGE"]]
