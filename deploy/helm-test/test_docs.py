"""docs/deploy.md's snippets, run: every block after a `<!-- checked: NAME -->` marker.

nginx blocks go through `nginx -t` with Debian's nginx and then serve a real request:
TLS with the certificate the doc's own `openssl req` made, HTTP/2, and the client's
address passed on in X-Forwarded-For. The openssl and `webhook` commands run as written,
with only host names, ports and paths swapped for local ones (listed beside each test),
the Bot API being the stand-in.
"""

import os
import re
import shutil
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from conftest import ROOT
from test_contract import BIN_DIR, Processes, free_port, http_get, wait_until

DOC = ROOT / "docs" / "deploy.md"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def checked_blocks():
    """NAME -> the text of the fenced block after `<!-- checked: NAME -->`."""
    text = DOC.read_text()
    blocks = dict(re.findall(r"<!-- checked: ([\w-]+) -->\n```\w*\n(.*?)```", text, re.S))
    return blocks


def test_the_checked_snippets_are_there():
    assert set(checked_blocks()) == {
        "nginx-http",
        "nginx-letsencrypt",
        "openssl-req",
        "nginx-self-signed",
        "webhook-set-certificate",
        "openssl-s-client",
        "webhook-info",
        "nats-permissions",
        "bot-cargo-toml",
        "bot-image-values",
    }
    # The directive Debian 12's nginx 1.22 refuses ("unknown directive http2").
    assert not re.search(r"^\s*http2 on;", DOC.read_text(), re.M)


def sh(script, cwd, env=None, check=True):
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, f"{script}\nexit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def certificate(tmp_path):
    """cert.pem and key.pem, made by the doc's own openssl commands."""
    out = sh(checked_blocks()["openssl-req"], cwd=tmp_path).stdout
    assert "CN = 203.0.113.7" in out or "CN=203.0.113.7" in out, out
    assert "IP Address:203.0.113.7" in out, out
    return tmp_path / "cert.pem", tmp_path / "key.pem"


class Echo(BaseHTTPRequestHandler):
    """The ingress's stand-in behind nginx: answers with the forwarding headers it got."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = f"xff={self.headers.get('X-Forwarded-For')} real={self.headers.get('X-Real-IP')} proto={self.headers.get('X-Forwarded-Proto')}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def backend():
    server = HTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def nginx_config(tmp_path, server_block, swaps):
    """A whole nginx.conf around a server block from the doc, writable paths in tmp."""
    for old, new in swaps.items():
        assert old in server_block, f"{old!r} not in the snippet any more"
        server_block = server_block.replace(old, new)
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi", "www"):
        (tmp_path / d).mkdir(exist_ok=True)
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"""worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log stderr;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
{server_block}
}}
"""
    )
    return conf


def nginx_test(conf, tmp_path):
    proc = subprocess.run([NGINX, "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True)
    assert proc.returncode == 0, f"nginx -t:\n{proc.stderr}\n{conf.read_text()}"
    assert "syntax is ok" in proc.stderr


def start_nginx(procs, conf, tmp_path, port):
    p = procs.start("nginx", [NGINX, "-e", "stderr", "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"])
    wait_until("nginx", lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, proc=p, procs=procs, limit=10)


def curl_webhook(port, host):
    """A POST as Telegram would make it, plus a forged X-Forwarded-For; what the backend saw."""
    out = subprocess.run(
        ["curl", "-sS", "-k", "--http2", "--resolve", f"{host}:{port}:127.0.0.1", "-H", "X-Forwarded-For: 6.6.6.6",
         "-d", '{"update_id":1}', "-w", " http=%{http_version}", f"https://{host}:{port}/webhook/123456"],
        capture_output=True, text=True, timeout=20,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def procs(tmp_path):
    p = Processes(tmp_path)
    yield p
    p.stop_all()


def test_nginx_http_block_for_the_acme_challenge(tmp_path):
    port = free_port()
    conf = nginx_config(tmp_path, checked_blocks()["nginx-http"], {"listen 80;": f"listen 127.0.0.1:{port};", "/var/www/html": str(tmp_path / "www")})
    nginx_test(conf, tmp_path)


def test_nginx_with_lets_encrypt_passes_the_real_client_address(tmp_path, certificate, backend, procs):
    cert, key = certificate
    port = free_port()
    conf = nginx_config(
        tmp_path,
        checked_blocks()["nginx-letsencrypt"],
        {
            "listen 443 ssl http2;": f"listen 127.0.0.1:{port} ssl http2;",
            "/etc/letsencrypt/live/bot.example.com/fullchain.pem": str(cert),
            "/etc/letsencrypt/live/bot.example.com/privkey.pem": str(key),
            "proxy_pass http://127.0.0.1:8080;": f"proxy_pass http://127.0.0.1:{backend};",
        },
    )
    nginx_test(conf, tmp_path)
    start_nginx(procs, conf, tmp_path, port)
    seen = curl_webhook(port, "bot.example.com")
    # The forged entry first, the real peer appended last: what the ingress believes.
    assert "xff=6.6.6.6, 127.0.0.1 real=127.0.0.1 proto=https" in seen, seen
    assert seen.endswith("http=2"), seen
    # Nothing but the webhook is proxied.
    out = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--resolve", f"bot.example.com:{port}:127.0.0.1", f"https://bot.example.com:{port}/metrics"], capture_output=True, text=True)
    assert out.stdout == "404"

    # The doc's s_client check against it.
    script = checked_blocks()["openssl-s-client"].replace("-connect bot.example.com:443", f"-connect 127.0.0.1:{port}")
    out = sh(script, cwd=tmp_path).stdout
    assert "subject=CN = 203.0.113.7" in out and "notAfter=" in out, out


def test_nginx_with_a_self_signed_certificate(tmp_path, certificate, backend, procs):
    cert, key = certificate
    port = free_port()
    conf = nginx_config(
        tmp_path,
        checked_blocks()["nginx-self-signed"],
        {
            "listen 8443 ssl http2;": f"listen 127.0.0.1:{port} ssl http2;",
            "/etc/tgpipe/cert.pem": str(cert),
            "/etc/tgpipe/key.pem": str(key),
            "proxy_pass http://127.0.0.1:8080;": f"proxy_pass http://127.0.0.1:{backend};",
        },
    )
    nginx_test(conf, tmp_path)
    start_nginx(procs, conf, tmp_path, port)
    seen = curl_webhook(port, "203.0.113.7")
    assert "xff=6.6.6.6, 127.0.0.1" in seen and seen.endswith("http=2"), seen


def test_webhook_set_with_the_certificate_then_webhook_info(tmp_path, certificate, procs):
    sink = free_port()
    s = procs.start("sink", [str(BIN_DIR / "tgpipe-loadtest"), "sink", "--listen", f"127.0.0.1:{sink}"])
    wait_until("Bot API stand-in", lambda: http_get(f"http://127.0.0.1:{sink}/_sink/stats")[0] == 200, proc=s, procs=procs)
    env = {
        "PATH": f"{BIN_DIR}:/usr/bin:/bin",
        "TGPIPE_BOT_TOKENS": "123456:doc-test-token",
        "TGPIPE_API_URL": f"http://127.0.0.1:{sink}",
        "SECRET": "doc-test-secret",
    }
    out = sh(checked_blocks()["webhook-set-certificate"], cwd=tmp_path, env=env).stdout
    assert "certificate:      uploaded" in out, out
    info = sh(checked_blocks()["webhook-info"], cwd=tmp_path, env=env).stdout
    assert "https://203.0.113.7:8443/webhook/123456" in info, info
    assert "certificate:      custom (uploaded with setWebhook)" in info, info


def test_the_nats_permissions_sketch_lets_each_component_do_its_part(tmp_path, procs):
    """The accounts block of docs/deploy.md, as written (only its store_dir moved here):
    the admin provisions and adds a bot, the worker's user reads the registry and may
    not change it, the ingress's user serves the registry's bot."""
    import json
    import urllib.error
    import urllib.request

    conf = tmp_path / "nats.conf"
    conf.write_text(checked_blocks()["nats-permissions"].replace("/data/jetstream", str(tmp_path / "js")))
    port, mon, sink = free_port(), free_port(), free_port()
    secrets = {"ADMIN_PASS": "admin-pass", "INGRESS_PASS": "ingress-pass", "WORKER_PASS": "worker-pass", "JS_KEY": "doc-test-encryption-key-0123456789"}
    n = procs.start("nats", [os.environ["TGPIPE_NATS_SERVER"], "-c", str(conf), "-a", "127.0.0.1", "-p", str(port), "-m", str(mon)], env=dict(os.environ, **secrets))
    wait_until("nats-server", lambda: http_get(f"http://127.0.0.1:{mon}/healthz?js-enabled-only=true")[0] == 200, proc=n, procs=procs)
    s = procs.start("sink", [str(BIN_DIR / "tgpipe-loadtest"), "sink", "--listen", f"127.0.0.1:{sink}"])
    wait_until("Bot API stand-in", lambda: http_get(f"http://127.0.0.1:{sink}/_sink/stats")[0] == 200, proc=s, procs=procs)

    def as_user(user, password, **extra):
        return {"PATH": f"{BIN_DIR}:/usr/bin:/bin", "NATS_URL": f"nats://{user}:{password}@127.0.0.1:{port}",
                "TGPIPE_API_URL": f"http://127.0.0.1:{sink}", **extra}

    admin = as_user("tgpipe-admin", "admin-pass")
    sh("tgpipe-ingress provision", cwd=tmp_path, env=admin)
    sh("tgpipe-example-bot bots add", cwd=tmp_path, env=dict(admin, TGPIPE_NEW_BOT_TOKEN="5151:doc-test-token", TGPIPE_WEBHOOK_URL="https://hooks.example.com"))

    worker = as_user("tgpipe-worker", "worker-pass")
    assert "5151" in sh("tgpipe-example-bot bots list", cwd=tmp_path, env=worker).stdout
    refused = sh("tgpipe-example-bot bots pause 5151", cwd=tmp_path, env=worker, check=False)
    assert refused.returncode != 0, refused.stdout
    assert "active" in sh("tgpipe-example-bot bots list", cwd=tmp_path, env=admin).stdout

    web, ops = free_port(), free_port()
    ingress = as_user("tgpipe-ingress", "ingress-pass", TGPIPE_PROVISION="false", TGPIPE_ALLOWED_CIDRS="any",
                      TGPIPE_LISTEN=f"127.0.0.1:{web}", TGPIPE_OPS_LISTEN=f"127.0.0.1:{ops}")
    i = procs.start("ingress", [str(BIN_DIR / "tgpipe-ingress")], env=ingress)
    wait_until("the ingress under its own NATS user", lambda: http_get(f"http://127.0.0.1:{ops}/readyz")[0] == 200, proc=i, procs=procs)
    calls = json.loads(http_get(f"http://127.0.0.1:{sink}/_sink/calls?since=0")[1])
    secret = [c["params"]["secret_token"] for c in calls if c["method"] == "setWebhook"][-1]
    update = b'{"update_id":7,"message":{"message_id":1,"date":0,"chat":{"id":5,"type":"private"},"text":"hi"}}'
    req = urllib.request.Request(f"http://127.0.0.1:{web}/webhook/5151", data=update, headers={"X-Telegram-Bot-Api-Secret-Token": secret, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
    except urllib.error.HTTPError as e:
        pytest.fail(f"the ingress answered {e.code} for the registry's bot:\n{procs.output(i)}")
