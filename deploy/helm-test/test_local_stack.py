"""deploy/local/up.sh's `down` and `status`, on a stack of stand-in processes (the real
stack is what `up.sh` itself prints; these pin the defects found in it)."""

import os
import re
import subprocess
import time

from conftest import ROOT

UP = ROOT / "deploy" / "local" / "up.sh"
NAMES = ["nats", "redis", "bot-api", "ingress", "worker"]
EXTRA_WORKERS = ["worker-2", "worker-3"]


def fake_stack(stack, extra=()):
    """One process per component that notes when it got SIGTERM."""
    stack.mkdir()
    procs = {}
    for name in [*NAMES, *extra]:
        script = f'trap "echo {name} >> {stack}/order; exit 0" TERM; while :; do sleep 0.05; done'
        p = subprocess.Popen(["bash", "-c", script], start_new_session=True)
        (stack / f"{name}.pid").write_text(f"{p.pid}\n")
        procs[name] = p
    (stack / "env").write_text("NATS_URL=nats://127.0.0.1:4222\nINGRESS_URL=http://127.0.0.1:8080\n")
    time.sleep(0.3)  # the traps are set
    return procs


def up(*args, stack, reap=(), limit=120):
    """Runs up.sh, reaping the stand-ins meanwhile (they are this process's children:
    unreaped, they would stay zombies that `kill -0` still finds)."""
    env = dict(os.environ, TGPIPE_LOCAL_STACK=str(stack))
    proc = subprocess.Popen(["bash", str(UP), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + limit
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
    # up.sh built one profile and the benchmarks another; now: one `cargo build` of the
    # workspace (and one of your own crate, into the same target directory), and the
    # binaries it runs come from that build's profile directory.
    text = UP.read_text()
    builds = re.findall(r"^\s*cargo build\b.*$", text, re.M)
    assert len([b for b in builds if "--manifest-path" not in b]) == 1, builds
    assert all("--target-dir \"$TARGET_DIR\"" in b for b in builds if "--manifest-path" in b), builds
    release = {"--release" in b for b in builds}
    assert len(release) == 1, builds
    profile = re.search(r"^PROFILE=(\w+)$", text, re.M).group(1)
    assert profile == ("release" if release.pop() else "debug")
    assert re.search(r'TARGET=.*/\$PROFILE$', text, re.M)
    assert "build_release" not in text


def test_down_left_your_extra_workers_running(tmp_path):
    # Your own workers, started beside the stack's, kept serving after `down`; the
    # workers `up.sh worker` starts are stopped with the stack's, before the ingress.
    stack = tmp_path / "stack"
    procs = fake_stack(stack, EXTRA_WORKERS)
    try:
        out = up("down", stack=stack, reap=procs.values())
        assert out.returncode == 0, out.stderr
        order = (stack / "order").read_text().split()
        assert sorted(order[:3]) == ["worker", "worker-2", "worker-3"], order
        assert order[3:] == ["ingress", "bot-api", "redis", "nats"], order
        for name, p in procs.items():
            assert p.poll() is not None, f"{name} still runs"
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def test_status_said_worker_stopped_while_your_workers_served(tmp_path):
    stack = tmp_path / "stack"
    procs = fake_stack(stack, EXTRA_WORKERS)
    (stack / "worker.env").write_text("BOT_BIN=/somewhere/target/debug/my-bot\n")
    try:
        out = up("status", stack=stack).stdout
        for name in ["worker", *EXTRA_WORKERS]:
            assert f"{name} (bot: my-bot): running" in out, out
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def test_up_with_your_own_bot_runs_it_in_place_of_the_example(tmp_path, outside_bot_crate):
    # `--bot <crate directory>`: your crate (outside the workspace) is built and answers
    # the /start; `worker` adds a second worker of it; `status` and `down` know both.
    crate, _ = outside_bot_crate
    stack = tmp_path / "stack"
    # The workspace's binaries are the test build's ($TGPIPE_BIN_DIR, set by run.sh).
    started = up("--bot", str(crate), stack=stack, limit=300)
    try:
        assert started.returncode == 0, started.stderr[-4000:]
        assert "sendMessage chat_id=111 text='/start'" in started.stdout, started.stdout
        assert f"with my-bot" in started.stdout, started.stdout
        added = up("worker", stack=stack)
        assert added.returncode == 0, added.stderr[-4000:]
        status = up("status", stack=stack).stdout
        assert "worker (bot: my-bot): running" in status, status
        assert "worker-2 (bot: my-bot): running" in status, status
        assert "BOT=my-bot" in status, status
        pids = [int((stack / f"{n}.pid").read_text()) for n in ("worker", "worker-2")]
    finally:
        down = up("down", stack=stack)
    assert down.returncode == 0, down.stderr
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower(), f"worker {pid} still runs"
    assert list(stack.glob("*.pid")) == []
