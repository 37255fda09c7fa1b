"""Renders the chart with helm (path in $HELM, set by run.sh) for the tests."""

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
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


def fenced_after(path, marker):
    """The fenced block after `<!-- checked: marker -->` in a Markdown file."""
    found = re.findall(rf"<!-- checked: {re.escape(marker)} -->\n```\w*\n(.*?)```", path.read_text(), re.S)
    assert len(found) == 1, f"{path.name}: one block marked {marker}, found {len(found)}"
    return found[0]


def dockerfile_build_script(path, args):
    """The build stage of a Dockerfile as a shell script: its RUN commands joined, with
    `--mount` flags dropped, and its ARGs (defaults, overridden by `args`) as variables.
    `WORKDIR`, `COPY . .` and the absolute paths are the caller's to map."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        if raw.strip().startswith("#") and not current:
            continue
        continued = raw.rstrip().endswith("\\")
        current += raw.rstrip().rstrip("\\").strip() + " "
        if not continued:
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                lines.append((word.upper(), rest.strip()))
            current = ""
    defaults, stage, runs = {}, None, []
    for word, rest in lines:
        if word == "FROM":
            stage = rest.split()[-1]
        elif word == "ARG" and stage is None:
            k, _, v = rest.partition("=")
            defaults[k] = v
        elif word == "RUN" and stage == "build":
            runs.append(re.sub(r"--mount=\S+\s*", "", rest))
    values = {**defaults, **args}
    head = "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())
    return "set -euo pipefail\n" + head + "\n".join(runs) + "\n", values


def write_if_changed(path, text):
    """Writes `text` unless the file has it already (cargo rebuilds what looks newer)."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


@pytest.fixture(scope="session")
def outside_bot(outside_bot_crate):
    """The binary of ``outside_bot_crate``, as the image would hold it."""
    return outside_bot_crate[1]


@pytest.fixture(scope="session")
def outside_bot_crate():
    """A bot crate outside the workspace, made of docs/deploy.md's Cargo.toml and the
    README's bot, built by deploy/docker/bot.Dockerfile's build steps run as a script
    (no Docker engine here): the build context holds the crate and a tgpipe checkout
    (this repository), `/src` is the context and `/out` a directory beside it. The
    target directory is the workspace's (dev profile, as the test build), so only the
    bot and the tgpipe crates are compiled again. Returns the crate's directory and the
    binary."""
    # One place per checkout, kept between runs: cargo knows the tgpipe crates by their
    # path, so the second run compiles nothing.
    tag = hashlib.sha1(str(ROOT).encode()).hexdigest()[:8]
    base = Path(tempfile.gettempdir()) / f"tgpipe-outside-bot-{tag}"
    ctx, out = base / "ctx", base / "out"
    crate = ctx / "my-bot"
    (crate / "src").mkdir(parents=True, exist_ok=True)
    if not (ctx / "tgpipe").is_symlink():
        (ctx / "tgpipe").symlink_to(ROOT)
    write_if_changed(crate / "Cargo.toml", fenced_after(ROOT / "docs" / "deploy.md", "bot-cargo-toml"))
    write_if_changed(crate / "src" / "main.rs", fenced_after(ROOT / "README.md", "readme-bot"))
    # `cargo generate-lockfile`, pinned to the workspace's versions: its lock file,
    # which cargo trims to the crate's dependencies.
    shutil.copy(ROOT / "Cargo.lock", crate / "Cargo.lock")
    subprocess.run(["cargo", "metadata", "--format-version", "1", "--manifest-path", str(crate / "Cargo.toml")],
                   check=True, capture_output=True)
    # The workspace's profile for dependencies, so that its compiled ones are reused.
    (ctx / ".cargo").mkdir(exist_ok=True)
    write_if_changed(ctx / ".cargo" / "config.toml", '[profile.dev.package."*"]\ndebug = false\n')
    target = os.environ.get("CARGO_TARGET_DIR") or json.loads(subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT, check=True,
        capture_output=True, text=True).stdout)["target_directory"]
    if (ctx / "target").is_symlink():
        (ctx / "target").unlink()
    (ctx / "target").symlink_to(target)
    script, _ = dockerfile_build_script(ROOT / "deploy" / "docker" / "bot.Dockerfile",
                                        {"BOT_DIR": "my-bot", "BOT_BIN": "my-bot", "PROFILE": "dev"})
    script = script.replace("/src/", f"{ctx}/").replace("/out/", f"{out}/")
    started = time.time()
    proc = subprocess.run(["bash", "-c", script], cwd=ctx, capture_output=True, text=True)
    assert proc.returncode == 0, f"the Dockerfile's build steps failed:\n{script}\n{proc.stderr[-4000:]}"
    print(f"outside bot built in {time.time() - started:.0f} s")
    return crate, out / "bot"
