"""The chart against the binaries it runs: every rendered container, started for real.

For the default values and every ``ci/*.yaml``: render the chart, take each container's
command, args and environment from the rendered Deployments and Jobs, and run the real
binaries with exactly those. Only what a cluster would supply is swapped: service host
names (``NATS_URL``, ``REDIS_URL``, ``TGPIPE_API_URL``, ``OTEL_EXPORTER_OTLP_ENDPOINT``)
point at a private nats-server, redis-server, Bot API stand-in and trace receiver started here, listen addresses ``0.0.0.0:<port>`` get a
free port on 127.0.0.1 (and the probes follow them), and mounted Secrets become files
under a temporary directory. Then:

- the provisioning Job's containers run in order and each must exit 0;
- each Deployment's container must start and answer its startup, liveness and readiness
  probes with 200;
- each ServiceMonitor endpoint (port name through the Service to the container) must
  serve Prometheus text, and each KEDA ScaledObject's query must name a series that the
  lane's pods really export, with that lane's label;
- with ``otlpEndpoint`` set, both tiers must export that update's spans to it (an OTLP/HTTP
  stand-in here takes the collector's place and looks for each service's name in what
  it receives);
- each PrometheusRule and dashboard expression may only use metric names the binaries
  really have: after one update went through (posted to a copy of the rendered ingress
  whose source check alone is opened, handled by the rendered worker, answered at the
  Bot API stand-in), the names must be on the live /metrics, or, for counters of events
  this run does not cause (dead letters, duplicates), registered in the binaries' source.

Any value the chart renders that a binary refuses fails here, with the binary's own
message. The binaries come from ``$TGPIPE_BIN_DIR`` (run.sh builds them); the servers from
``$TGPIPE_NATS_SERVER`` / ``$TGPIPE_REDIS_SERVER`` (deploy/local/lib.sh finds or installs them).
"""

import base64
import http.client
import http.server
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import CHART, ROOT, by_kind, containers, pod_spec, render

BIN_DIR = Path(os.environ.get("TGPIPE_BIN_DIR", "TGPIPE_BIN_DIR is not set (run.sh sets it)"))
DOCKER = ROOT / "deploy" / "docker"

# The defaults need a bot (there is no default for one); ten digits like a real id, which
# is what exposed numbers rendered in exponent form.
DEFAULT_BOTS = {"bots.list[0].id": "7123456789", "bots.list[0].secret": "contract-secret", "bots.list[0].token": "7123456789:contract-token"}
# Your own bot (test_bot_image.py builds it from outside the workspace), from your own
# registry with your own tag, the ingress image staying the chart's.
OUTSIDE_BOT_IMAGE = "registry.example.com/me/my-bot:1.4.2"
OUTSIDE_BOT = {**DEFAULT_BOTS, "worker.image.registry": "registry.example.com", "worker.image.repository": "me/my-bot",
               "worker.image.tag": "1.4.2", "worker.command": "bot"}
RENDERS = [pytest.param([], DEFAULT_BOTS, id="default"), pytest.param([], OUTSIDE_BOT, id="outside-bot")] + [
    pytest.param([f], {}, id=f"ci-{f.stem}") for f in sorted((CHART / "ci").glob("*.yaml"))
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=2):
    """(status, body) of a GET; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return 0, ""


class Processes:
    """Child processes of one test, stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.children = []

    def start(self, name, argv, env=None):
        log = open(self.tmp / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        proc.name, proc.log = name, self.tmp / f"{name}.log"
        self.children.append(proc)
        return proc

    def output(self, proc):
        return proc.log.read_text(errors="replace")[-4000:]

    def stop_all(self):
        for p in reversed(self.children):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.time() + 10
        for p in reversed(self.children):
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def wait_until(what, cond, limit=30, proc=None, procs=None):
    deadline = time.time() + limit
    while time.time() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: {proc.name} exited with {proc.returncode}:\n{procs.output(proc)}")
        time.sleep(0.1)
    extra = f"\n{procs.output(proc)}" if proc is not None else ""
    pytest.fail(f"{what}: not within {limit} s{extra}")


class TraceReceiver:
    """Stands in for an OpenTelemetry collector: accepts OTLP/HTTP exports (protobuf)
    on ``/v1/traces`` and keeps their bodies."""

    def __init__(self):
        self.bodies = []
        received = self.bodies

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                ok = self.path == "/v1/traces" and self.headers.get("Content-Type") == "application/x-protobuf"
                if ok:
                    received.append(body)
                self.send_response(200 if ok else 400)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def services(self):
        """The service names of the spans received (``service.name`` is a plain string
        in the protobuf)."""
        blob = b"".join(self.bodies)
        return {s for s in ("tgpipe-ingress", "tgpipe-worker") if s.encode() in blob}


@pytest.fixture
def stack(tmp_path):
    """A private nats-server (JetStream), redis-server and Bot API stand-in."""
    for var in ("TGPIPE_NATS_SERVER", "TGPIPE_REDIS_SERVER"):
        assert os.environ.get(var), f"{var} is not set (deploy/helm-test/run.sh sets it)"
    for b in ("tgpipe-ingress", "tgpipe-example-bot", "tgpipe-loadtest"):
        assert (BIN_DIR / b).is_file(), f"{BIN_DIR / b} missing (run.sh builds it)"
    procs = Processes(tmp_path)
    traces = TraceReceiver()
    nats, mon, redis, sink = free_port(), free_port(), free_port(), free_port()
    n = procs.start("nats", [os.environ["TGPIPE_NATS_SERVER"], "-a", "127.0.0.1", "-p", str(nats), "-m", str(mon), "-js", "-sd", str(tmp_path / "js")])
    r = procs.start("redis", [os.environ["TGPIPE_REDIS_SERVER"], "--bind", "127.0.0.1", "--port", str(redis), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)])
    s = procs.start("sink", [str(BIN_DIR / "tgpipe-loadtest"), "sink", "--listen", f"127.0.0.1:{sink}"])
    try:
        wait_until("nats-server", lambda: http_get(f"http://127.0.0.1:{mon}/healthz?js-enabled-only=true")[0] == 200, proc=n, procs=procs)
        wait_until("redis-server", lambda: socket.socket().connect_ex(("127.0.0.1", redis)) == 0, proc=r, procs=procs)
        wait_until("Bot API stand-in", lambda: http_get(f"http://127.0.0.1:{sink}/_sink/stats")[0] == 200, proc=s, procs=procs)
        yield {
            "procs": procs,
            "tmp": tmp_path,
            "nats": f"nats://127.0.0.1:{nats}",
            "redis": f"redis://127.0.0.1:{redis}",
            "api": f"http://127.0.0.1:{sink}",
            "traces": traces,
        }
    finally:
        procs.stop_all()
        traces.server.shutdown()


def dockerfile(name):
    """ENTRYPOINT, CMD and ARG defaults of a Dockerfile's runtime stage."""
    text = (DOCKER / name).read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    import json

    entry = json.loads(re.findall(r"^ENTRYPOINT (.+)$", text, re.M)[-1])
    cmd = json.loads(re.findall(r"^CMD (.+)$", text, re.M)[-1])
    # Every name the runtime stage installs into /usr/local/bin, resolved to a binary.
    installed = {}
    for src, dst in re.findall(r"^COPY --from=build (\S+) (/usr/local/bin/\S+)$", text, re.M):
        dst = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], dst)
        installed[dst] = src
    return entry, cmd, installed, args


def binary_for(image, command, values_images):
    """The binary of the build that the image's Dockerfile installs under that name."""
    ingress_repo, worker_repo, outside = values_images
    if outside and image == OUTSIDE_BOT_IMAGE:
        entry, cmd, installed, args = dockerfile("bot.Dockerfile")
        assert set(installed) == {"/usr/local/bin/bot"}, installed
        argv0 = (command or entry)[0]
        path = argv0 if argv0.startswith("/") else f"/usr/local/bin/{argv0}"
        assert path in installed, f"{image}: command {argv0!r} is not installed by bot.Dockerfile"
        return outside, (command[1:] if command else entry[1:]), cmd
    if ingress_repo in image:
        entry, cmd, installed, args = dockerfile("ingress.Dockerfile")
        built = {path: "tgpipe-ingress" for path in installed}
    elif worker_repo in image:
        entry, cmd, installed, args = dockerfile("worker.Dockerfile")
        built = {path: args["BOT_BIN"] for path in installed}
    else:
        pytest.fail(f"image {image} is neither the ingress's nor the worker's")
    argv0 = (command or entry)[0]
    # A bare name is looked up on the image's PATH, which has /usr/local/bin.
    path = argv0 if argv0.startswith("/") else f"/usr/local/bin/{argv0}"
    assert path in built, f"{image}: command {argv0!r} is not installed by the Dockerfile ({sorted(built)})"
    return BIN_DIR / built[path], (command[1:] if command else entry[1:]), cmd


def secrets_of(objs, values_bots):
    """Secret name -> {key: value}; an existing Secret the chart only names is made up
    from the bot ids in values (what an operator would have created)."""
    out = {}
    for s in by_kind(objs, "Secret"):
        data = dict(s.get("stringData") or {})
        for k, v in (s.get("data") or {}).items():
            data[k] = base64.b64decode(v).decode()
        out[s["metadata"]["name"]] = data
    ids = [str(b["id"]) for b in values_bots] or ["7123456789"]
    made_up = {"bots": ",".join(f"{i}:contract-secret-{i}" for i in ids), "tokens": ",".join(f"{i}:contract-token" for i in ids)}
    return out, made_up


class Pod:
    """One container of a rendered workload, set up to run here."""

    def __init__(self, workload, container, ctx):
        self.name = f"{workload['metadata']['name']}.{container['name']}"
        self.container = container
        stack, secrets, made_up = ctx["stack"], ctx["secrets"], ctx["made_up"]
        spec = pod_spec(workload)
        root = stack["tmp"] / "pods" / self.name
        # Mounted Secrets as files.
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = {}
        for m in container.get("volumeMounts", []):
            vol = volumes[m["name"]]
            target = root / m["mountPath"].lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            if "secret" in vol:
                data = secrets.get(vol["secret"]["secretName"], made_up)
                items = vol["secret"].get("items") or [{"key": k, "path": k} for k in data]
                for it in items:
                    assert it["key"] in data, f"{self.name}: Secret {vol['secret']['secretName']} has no key {it['key']}"
                    (target / it["path"]).write_text(data[it["key"]])
            mounts[m["mountPath"]] = target

        def local(value):
            for mount, target in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
                if value == mount or value.startswith(mount + "/"):
                    return str(target) + value[len(mount):]
            return value

        # Ports: container ports by name and number, and where they listen here.
        self.ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        self.local_port = {}
        env = {}
        for e in container.get("env", []):
            name = e["name"]
            if "valueFrom" in e:
                ref = e["valueFrom"].get("secretKeyRef")
                assert ref, f"{self.name}: env {name} comes from {e['valueFrom']}, which this test cannot supply"
                value = secrets.get(ref["name"], made_up)[ref["key"]]
            else:
                value = e.get("value", "")
            if name == "NATS_URL":
                value = stack["nats"]
            elif name == "REDIS_URL":
                value = stack["redis"]
            elif name == "TGPIPE_API_URL":
                value = stack["api"]
            elif name == "OTEL_EXPORTER_OTLP_ENDPOINT":
                value = stack["traces"].url
            elif name == "TGPIPE_WEBHOOK_URL":
                pass  # the public URL given to Telegram; no pod calls it
            elif name.endswith("_URL"):
                pytest.fail(f"{self.name}: {name}={value} names a service this test does not stand in for")
            listen = re.fullmatch(r"(?:0\.0\.0\.0|\[::\]):(\d+)", value)
            if listen:
                port = int(listen.group(1))
                self.local_port[port] = free_port()
                value = f"127.0.0.1:{self.local_port[port]}"
            env[name] = local(value)
        for port in self.ports.values():
            assert port in self.local_port, f"{self.name}: container port {port} is declared, but no setting makes the binary listen on it"
        # Nothing from the test's own environment leaks in: only what the pod gets.
        self.env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(stack["tmp"]), **env}
        binary, entry_args, image_cmd = binary_for(container["image"], container.get("command"), ctx["images"])
        args = container.get("args", image_cmd if not container.get("command") else [])
        self.argv = [str(binary), *entry_args, *[local(a) for a in args]]

    def url(self, port, path):
        number = self.ports.get(port, port)
        assert number in self.local_port, f"{self.name}: port {port} is not one the binary listens on"
        return f"http://127.0.0.1:{self.local_port[number]}{path}"


def run_job(job, ctx):
    spec = pod_spec(job)
    procs = ctx["stack"]["procs"]
    # Init containers one after the other, then the containers (here also in turn).
    for c in spec.get("initContainers", []) + spec["containers"]:
        pod = Pod(job, c, ctx)
        p = procs.start(pod.name, pod.argv, env=pod.env)
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{pod.name}: did not finish within 60 s:\n{procs.output(p)}")
        assert p.returncode == 0, f"{pod.name} ({' '.join(pod.argv[1:])}) exited {p.returncode}:\n{procs.output(p)}"


def start_deployment(dep, ctx):
    procs = ctx["stack"]["procs"]
    pods = []
    for c in pod_spec(dep)["containers"]:
        pod = Pod(dep, c, ctx)
        pod.proc = procs.start(pod.name, pod.argv, env=pod.env)
        pods.append(pod)
    for pod in pods:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = pod.container.get(probe, {}).get("httpGet")
            assert get, f"{pod.name}: no {probe}"
            url = pod.url(get["port"], get["path"])
            wait_until(f"{pod.name} {probe} {get['path']}", lambda: http_get(url)[0] == 200, proc=pod.proc, procs=procs)
    return pods


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def scrape(running, objs, monitor):
    """Scrapes every pod a ServiceMonitor endpoint would, returning the texts."""
    texts = []
    services = [s for s in by_kind(objs, "Service") if matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert services, f"ServiceMonitor {monitor['metadata']['name']} selects no Service"
    for ep in monitor["spec"]["endpoints"]:
        for svc in services:
            ports = [p for p in svc["spec"]["ports"] if p.get("name") == ep["port"]]
            assert ports, f"ServiceMonitor {monitor['metadata']['name']}: Service {svc['metadata']['name']} has no port named {ep['port']}"
            target = ports[0].get("targetPort", ports[0]["port"])
            for dep, pods in running:
                if not matches(svc["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"]):
                    continue
                for pod in pods:
                    status, text = http_get(pod.url(target, ep.get("path", "/metrics")))
                    assert status == 200, f"{monitor['metadata']['name']}: {pod.name} answered {status} on {ep['port']}{ep.get('path')}"
                    texts.append((pod, text))
    assert texts, f"ServiceMonitor {monitor['metadata']['name']} scrapes no pod"
    return texts


def metric_names(text):
    """Metric names in Prometheus text, histograms by their base name."""
    names = {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{|\s)", text, re.M)}
    return names | {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}


def names_in_source():
    """Every `"tgpipe_..."` string literal in the binaries' sources: the metrics that only
    appear on /metrics once their event happened (a dead letter, a Bot API call)."""
    found = set()
    for crate in ("ingress", "worker", "shared"):
        for path in (ROOT / crate / "src").rglob("*.rs"):
            found |= set(re.findall(r'"(tgpipe_[a-z0-9_]+)"', path.read_text()))
    return found


# Named by an alert or panel ahead of the binaries: the per-lane partition handover
# counter comes with partitioned consumption. Drop a name from here once the binaries
# export it (the test then checks it like the others).
PENDING: dict[str, str] = {}


def queried_names(exprs):
    names = set()
    for e in exprs:
        names |= {re.sub(r"_(bucket|count|sum)$", "", n) for n in re.findall(r"\b(tgpipe_[a-z0-9_]+)", e)}
    return names


def check_queried_metrics(objs, live):
    """Alert and dashboard expressions use only metric names the binaries have: seen on
    the live /metrics, or (for event-driven counters) registered in their source."""
    import json

    exprs = [r["expr"] for pr in by_kind(objs, "PrometheusRule") for g in pr["spec"]["groups"] for r in g["rules"]]
    for cm in by_kind(objs, "ConfigMap"):
        for text in (cm.get("data") or {}).values():
            dash = json.loads(text)
            exprs += [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    source = names_in_source()
    unknown = {n for n in queried_names(exprs) if n not in live and n not in source and n not in PENDING}
    assert not unknown, f"alerts or dashboard query metrics no binary has: {sorted(unknown)}"
    # Kept honest: a pending name that now exists is checked like the others.
    return {n: ("live" if n in live else "source" if n in source else "pending") for n in queried_names(exprs)}


def deliver_one_update(running, ctx):
    """Posts a /start through a second copy of the rendered ingress (only its source
    check opened: the test's requests come from 127.0.0.1, not Telegram) and waits for
    a worker to reply through the Bot API stand-in."""
    procs = ctx["stack"]["procs"]
    ingress = [pods[0] for dep, pods in running if dep["metadata"]["labels"].get("app.kubernetes.io/component") == "ingress"][0]
    web, ops = free_port(), free_port()
    env = dict(ingress.env, TGPIPE_ALLOWED_CIDRS="any", TGPIPE_LISTEN=f"127.0.0.1:{web}", TGPIPE_OPS_LISTEN=f"127.0.0.1:{ops}")
    p = procs.start("update-sender", ingress.argv, env=env)
    wait_until("update sender ready", lambda: http_get(f"http://127.0.0.1:{ops}/readyz")[0] == 200, proc=p, procs=procs)
    bots = Path(env["TGPIPE_BOTS_FILE"]).read_text() if "TGPIPE_BOTS_FILE" in env else env["TGPIPE_BOTS"]
    bot, secret = bots.split(",")[0].strip().split(":", 1)
    update = ('{"update_id":42,"message":{"message_id":1,"date":0,"chat":{"id":111,"type":"private","first_name":"Ada"},'
              '"from":{"id":111,"is_bot":false,"first_name":"Ada"},"text":"/start","entities":[{"type":"bot_command","offset":0,"length":6}]}}')
    req = urllib.request.Request(f"http://127.0.0.1:{web}/webhook/{bot}", data=update.encode(), headers={"X-Telegram-Bot-Api-Secret-Token": secret, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    calls = lambda: http_get(f"{ctx['stack']['api']}/_sink/calls?since=0")[1]
    wait_until("the bot's reply at the Bot API stand-in", lambda: "sendMessage" in calls(), limit=20)


@pytest.mark.parametrize("files,sets", RENDERS)
def test_every_rendered_container_starts_with_what_the_chart_gives_it(stack, files, sets, request):
    import yaml

    objs = render(*files, sets=sets)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    bots = [{"id": DEFAULT_BOTS["bots.list[0].id"]}] if sets else []
    for f in files:
        bots = (yaml.safe_load(Path(f).read_text()).get("bots") or {}).get("list") or bots
    secrets, made_up = secrets_of(objs, bots)
    ctx = {
        "stack": stack,
        "secrets": secrets,
        "made_up": made_up,
        "images": (values["ingress"]["image"]["repository"], values["worker"]["image"]["repository"],
                   request.getfixturevalue("outside_bot") if sets == OUTSIDE_BOT else None),
    }
    for job in by_kind(objs, "Job"):
        run_job(job, ctx)
    deployments = by_kind(objs, "Deployment")
    assert deployments
    running = [(dep, start_deployment(dep, ctx)) for dep in deployments]

    # One webhook request from outside Telegram's ranges: the ingress closes such a
    # connection at accept (before it costs a slot; its request counter exists from the
    # start), or answers 403 behind a proxy.
    for dep, pods in running:
        if dep["metadata"]["labels"].get("app.kubernetes.io/component") == "ingress":
            for pod in pods:
                try:
                    urllib.request.urlopen(urllib.request.Request(pod.url("http", "/webhook/1"), data=b"{}"), timeout=5)
                    raise AssertionError("a request from 127.0.0.1 was served by the rendered ingress")
                except urllib.error.HTTPError as e:
                    assert e.code == 403, e
                except (ConnectionError, http.client.RemoteDisconnected):
                    pass
                except urllib.error.URLError as e:
                    assert isinstance(e.reason, ConnectionError), e

    scraped = {}
    for monitor in by_kind(objs, "ServiceMonitor"):
        for pod, text in scrape(running, objs, monitor):
            scraped[pod.name] = text
    exporting = {
        dep["metadata"]["labels"].get("app.kubernetes.io/component")
        for dep, pods in running
        if any(e["name"] == "OTEL_EXPORTER_OTLP_ENDPOINT" for c in containers(dep) for e in c.get("env", []))
    }
    if exporting:
        assert exporting == {"ingress", "worker"}, f"only {exporting} export traces"
    if by_kind(objs, "PrometheusRule") or by_kind(objs, "ConfigMap") or exporting or ctx["images"][2]:
        # One update through the stack, so that the handling and Bot API series exist
        # (and your own bot, from outside the workspace, answers it).
        deliver_one_update(running, ctx)
    if exporting:
        # Spans are batched for up to 5 s (OTEL_BSP_SCHEDULE_DELAY's default).
        traces = stack["traces"]
        wait_until("spans of both tiers at the trace receiver", lambda: traces.services() == {"tgpipe-ingress", "tgpipe-worker"}, limit=20)
    if by_kind(objs, "PrometheusRule") or by_kind(objs, "ConfigMap"):
        assert scraped, "alerts or a dashboard without a ServiceMonitor to check them against"
        for monitor in by_kind(objs, "ServiceMonitor"):
            for pod, text in scrape(running, objs, monitor):
                scraped[pod.name] = text
        live = set().union(*(metric_names(t) for t in scraped.values()))
        found = check_queried_metrics(objs, live)
        # What KEDA, the lag and the 429 alerts use must be live, not just in source.
        for name in ("tgpipe_worker_consumer_pending", "tgpipe_bot_api_calls_total", "tgpipe_worker_outcomes_total", "tgpipe_ingress_requests_total"):
            assert found.get(name) == "live", (name, found)

    for so in by_kind(objs, "ScaledObject"):
        target = so["spec"]["scaleTargetRef"]["name"]
        found = [(d, p) for d, p in running if d["metadata"]["name"] == target]
        assert found, f"ScaledObject {so['metadata']['name']} targets {target}, which is not rendered"
        dep, pods = found[0]
        for trigger in so["spec"]["triggers"]:
            assert trigger["type"] == "prometheus", trigger
            query = trigger["metadata"]["query"]
            m = re.fullmatch(r"sum\((\w+)\{(.*)\}\)", query)
            assert m, f"unexpected query {query}"
            metric, matchers = m.group(1), dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            lane = [e["value"] for e in pod_spec(dep)["containers"][0]["env"] if e["name"] == "TGPIPE_LANE"][0]
            assert matchers.get("lane") == lane, f"{query} does not select lane {lane}"
            for pod in pods:
                # The lag gauge is refreshed every few seconds after the pod starts.
                def exported():
                    status, text = http_get(pod.url("http", "/metrics"))
                    return status == 200 and re.search(rf'^{metric}\{{[^}}]*lane="{lane}"', text, re.M)

                wait_until(f"{pod.name} exports {metric}{{lane=\"{lane}\"}}", exported, limit=15)
