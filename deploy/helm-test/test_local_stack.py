"""deploy/local/up.sh's `down` and `status`, on a stack of stand-in processes (the real
stack is what `up.sh` itself prints; these pin the defects found in it)."""

import os
import re
import subprocess
import time

from conftest import ROOT

UP = ROOT / "deploy" / "local" / "up.sh"
NAMES = ["nats", "redis", "bot-api", "ingress", "worker"]


def fake_stack(stack):
    """One process per component that notes when it got SIGTERM."""
    stack.mkdir()
    procs = {}
    for name in NAMES:
        script = f'trap "echo {name} >> {stack}/order; exit 0" TERM; while :; do sleep 0.05; done'
        p = subprocess.Popen(["bash", "-c", script], start_new_session=True)
        (stack / f"{name}.pid").write_text(f"{p.pid}\n")
        procs[name] = p
    (stack / "env").write_text("NATS_URL=nats://127.0.0.1:4222\nINGRESS_URL=http://127.0.0.1:8080\n")
    time.sleep(0.3)  # the traps are set
    return procs


def up(*args, stack, reap=()):
    """Runs up.sh, reaping the stand-ins meanwhile (they are this process's children:
    unreaped, they would stay zombies that `kill -0` still finds)."""
    env = dict(os.environ, TGPIPE_LOCAL_STACK=str(stack))
    proc = subprocess.Popen(["bash", str(UP), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while proc.poll() is None:
        assert time.time() < deadline, "up.sh did not finish"
        for p in reap:
            p.poll()
        time.sleep(0.05)
    out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_down_stops_the_workers_and_ingress_before_nats_and_redis(tmp_path):
    # `down` stopped NATS and Redis before the worker, which then spent its drain
    # reconnecting.
    stack = tmp_path / "stack"
    procs = fake_stack(stack)
    try:
        out = up("down", stack=stack, reap=procs.values())
        assert out.returncode == 0, out.stderr
        order = (stack / "order").read_text().split()
        assert order == ["worker", "ingress", "bot-api", "redis", "nats"], order
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def test_status_after_down_says_nothing_runs_instead_of_old_ports(tmp_path):
    stack = tmp_path / "stack"
    procs = fake_stack(stack)
    try:
        running = up("status", stack=stack).stdout
        assert "worker: running" in running and "INGRESS_URL=" in running, running
        up("down", stack=stack, reap=procs.values())
        after = up("status", stack=stack)
        assert after.returncode == 0
        assert "nothing runs" in after.stdout, after.stdout
        assert "127.0.0.1:" not in after.stdout, after.stdout
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def test_up_builds_once_in_the_profile_it_runs():
    # up.sh built one profile and the benchmarks another; now: one `cargo build`, and the
    # binaries it runs come from that build's profile directory.
    text = UP.read_text()
    builds = re.findall(r"^\s*cargo build\b.*$", text, re.M)
    assert len(builds) == 1, builds
    release = "--release" in builds[0]
    profile = re.search(r"^PROFILE=(\w+)$", text, re.M).group(1)
    assert profile == ("release" if release else "debug")
    assert re.search(r'TARGET=.*/\$PROFILE$', text, re.M)
    assert "build_release" not in text
