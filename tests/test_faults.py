"""Fault injection: a misbehaving judge server on 127.0.0.1 (one per failure mode), a full disk, kills and signals.

Each test here was first run against the code before the fix it covers and failed there (docs/usage/robustness.md
lists the faults, what happens, and the message). Bad *inputs* (flags, configs, files) are in
tests/test_bad_input_table.py.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from rewardflow.rewards.base import load_reward
from rewardflow.rewards.judge import JudgeConfigError

KEY = "sk-fault-SECRET-81c2e7"
ENV = "RF_FAULT_JUDGE_KEY"


# ------------------------------------------------------------------------------------------------ fake judges
def chat_reply(text: str) -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}).encode()


class Recorder(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 that records every request (method, path, headers) and answers with
    ``respond(handler) -> (status, headers, body)``."""

    daemon_threads = True

    def __init__(self, respond):
        self.requests: list[dict] = []
        self.respond = respond
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                server.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                        "body": body})
                status, headers, data = server.respond(self)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _any

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self):
        self.shutdown()
        self.server_close()


class RawServer:
    """A TCP server on 127.0.0.1 whose connections are handled by ``handle(conn, stop)`` (a raw socket): for
    replies no HTTP library would send (dripped bytes, a connection closed mid-reply)."""

    def __init__(self, handle):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = threading.Event()
        self.connections = 0

        def loop():
            while not self.stop.is_set():
                try:
                    conn, _ = self.sock.accept()
                except OSError:
                    return
                self.connections += 1
                threading.Thread(target=self._serve, args=(handle, conn), daemon=True).start()

        threading.Thread(target=loop, daemon=True).start()

    def _serve(self, handle, conn):
        try:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            length = next((int(ln.split(b":")[1]) for ln in head.split(b"\r\n")
                           if ln.lower().startswith(b"content-length:")), 0)
            while len(rest) < length:
                rest += conn.recv(65536)
            handle(conn, self.stop)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.stop.set()
        self.sock.close()


@pytest.fixture
def servers():
    made = []
    yield made
    for s in made:
        s.close()


def drip(data: bytes, every: float, limit_s: float = 30.0):
    """A handler that sends ``data`` one byte every ``every`` seconds (for at most ``limit_s``)."""

    def handle(conn, stop):
        t0 = time.monotonic()
        for i in range(len(data)):
            if stop.wait(every) or time.monotonic() - t0 > limit_s:
                return
            conn.sendall(data[i:i + 1])

    return handle


def judge_at(url: str, **kw):
    kw.setdefault("api_key_env", ENV)
    kw.setdefault("backoff", 0.01)
    kw.setdefault("max_retries", 0)
    return load_reward("vlm_judge", base_url=url + "/v1", model="judge", **kw)


IMAGES = torch.full((2, 3, 8, 8), 0.5)


# ------------------------------------------------------------------------------------------------ judge security
def test_judge_follows_no_redirect_and_sends_the_key_nowhere_else(servers, monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    other = Recorder(lambda h: (200, {}, chat_reply("Final Score: 10")))
    servers.append(other)
    for code in (301, 302, 303, 307, 308):
        judge_srv = Recorder(lambda h, code=code: (code, {"Location": other.url + "/steal?x=1"}, b""))
        servers.append(judge_srv)
        with pytest.raises(JudgeConfigError, match=rf"HTTP {code}, a redirect to {other.url}; the judge follows "
                                                   "no redirect") as e:
            judge_at(judge_srv.url)(IMAGES, ["a", "b"])
        assert KEY not in str(e.value) and "steal" not in str(e.value)
        assert judge_srv.requests and judge_srv.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"
    assert other.requests == []  # the other origin never saw the key, nor any request


def test_judge_key_is_stripped_and_validated_at_load(servers, monkeypatch, caplog):
    srv = Recorder(lambda h: (200, {}, chat_reply("Final Score: 10")))
    servers.append(srv)
    monkeypatch.setenv(ENV, f"  {KEY}\n")  # `export KEY=$(cat key.txt)` with a trailing newline
    with caplog.at_level(logging.DEBUG):
        s = judge_at(srv.url)(IMAGES, ["a", "b"])
    assert s.tolist() == [1.0, 1.0]
    assert {r["headers"]["Authorization"] for r in srv.requests} == {f"Bearer {KEY}"}

    for bad, what in ((f"{KEY}\nX-Injected: 1", "2 whitespace"), (f"sk-a b{KEY}", "1 whitespace"),
                      (f"{KEY}\x7f", "1 control"), (f"{KEY}é", "1 non-ASCII")):
        monkeypatch.setenv(ENV, bad)
        with pytest.raises(JudgeConfigError, match=rf"the API key in \${ENV} has {what} character\(s\) inside it"
                                                   rf" \({len(bad.strip())} characters in all\)") as e:
            judge_at(srv.url)
        assert KEY not in str(e.value)
    assert KEY not in caplog.text


class Dripper:
    """Replies worth testing the total deadline on: headers dripped, or the body dripped after prompt headers."""

    BODY = chat_reply("Final Score: 10")
    HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY)


@pytest.mark.parametrize("mode", ["body", "headers"])
def test_judge_timeout_is_a_total_deadline_per_request(servers, mode):
    if mode == "body":
        def handle(conn, stop):
            conn.sendall(Dripper.HEAD)
            drip(Dripper.BODY, 0.05)(conn, stop)
    else:
        handle = drip(Dripper.HEAD + Dripper.BODY, 0.05)
    srv = RawServer(handle)
    servers.append(srv)
    r = judge_at(srv.url, timeout=1.0, max_retries=1, max_concurrency=2)
    t0 = time.monotonic()
    s = r(IMAGES, ["a", "b"])
    elapsed = time.monotonic() - t0
    assert torch.isnan(s).all()  # each read came within 0.05 s, but no request may take more than 1 s
    assert all("timed out after 1s" in x.error and "gave up after 2 attempts" in x.error for x in r.last_replies)
    assert 2.0 <= elapsed < 3.5, elapsed  # two attempts of 1 s each (+ 0.01 s backoff), both images in parallel


def test_judge_failure_modes_give_nan_or_a_config_error_and_never_show_the_key(servers, monkeypatch, caplog):
    """One fake judge per failure mode; every one echoes the key back to try to get it logged."""
    monkeypatch.setenv(ENV, KEY)
    echo = lambda h: h.headers.get("Authorization", "").encode()
    modes = {
        "500 echoing the key": (lambda h: (500, {}, b"boom " + echo(h)), "nan", "HTTP 500"),
        "400 echoing the key": (lambda h: (400, {}, b"bad " + echo(h)), "nan", "HTTP 400"),
        "reply not JSON": (lambda h: (200, {}, b"<html>" + echo(h)), "nan", "malformed chat-completions"),
        "JSON without choices": (lambda h: (200, {}, json.dumps({"x": echo(h).decode()}).encode()), "nan",
                                 "malformed chat-completions"),
        "unparseable rating": (lambda h: (200, {}, chat_reply("great! " + echo(h).decode())), "nan",
                               "unparseable reply"),
        "rating off the scale": (lambda h: (200, {}, chat_reply("Final Score: 11")), "nan", "unparseable reply"),
        "429 with a huge Retry-After": (lambda h: (429, {"Retry-After": "1e9"}, b""), "nan", "HTTP 429"),
        "401 echoing the key": (lambda h: (401, {}, b"who is " + echo(h)), "raise", "HTTP 401"),
        "404": (lambda h: (404, {}, b"no such model"), "raise", "HTTP 404"),
    }
    with caplog.at_level(logging.DEBUG):
        for name, (respond, outcome, msg) in modes.items():
            srv = Recorder(respond)
            servers.append(srv)
            r = judge_at(srv.url, max_retries=1, backoff_max=0.05)
            if outcome == "raise":
                with pytest.raises(JudgeConfigError, match=msg) as e:
                    r(IMAGES, ["a", "b"])
                text = str(e.value)
            else:
                s = r(IMAGES, ["a", "b"])
                assert torch.isnan(s).all(), name
                text = " ".join(x.error for x in r.last_replies)
                assert msg in text, (name, text)
            assert KEY not in text, name
    # a connection closed without a reply, and one closed in the middle of the body
    for handle in (lambda c, s: None, lambda c, s: c.sendall(Dripper.HEAD + Dripper.BODY[:10])):
        srv = RawServer(handle)
        servers.append(srv)
        with caplog.at_level(logging.DEBUG):
            r = judge_at(srv.url, max_retries=1)
            assert torch.isnan(r(IMAGES, ["a", "b"])).all()
        assert all("connection error" in x.error for x in r.last_replies), [x.error for x in r.last_replies]
        assert srv.connections == 4  # retried once per image
    assert KEY not in caplog.text


def test_score_exits_1_when_every_judge_query_failed(servers, monkeypatch, tmp_path, capsys):
    from PIL import Image

    from rewardflow.cli import main

    for i in range(3):
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
    srv = Recorder(lambda h: (400, {}, b"model overloaded"))  # not retried: every query fails at once
    servers.append(srv)
    monkeypatch.setenv("REWARDFLOW_JUDGE_URL", srv.url + "/v1")
    monkeypatch.setenv("REWARDFLOW_JUDGE_MODEL", "judge")
    out = tmp_path / "scores.json"
    argv = ["score", "--reward", "vlm_judge", "--images", str(tmp_path), "--prompt", "a red square", "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "rewardflow: error: none of the 3 scored image(s) got a score (all NaN)" in err
    assert len(srv.requests) == 3
    doc = json.loads(out.read_text())  # the rows are still written, as JSON null
    assert [r["vlm_judge"] for r in doc["rows"]] == [None] * 3 and doc["summary"]["total"]["nan"] == 3

    count = itertools.count()  # next() is atomic: exactly one of the three queries fails
    srv.respond = lambda h: (200, {}, chat_reply("Final Score: 10") if next(count) % 2 == 0 else b"x")
    assert main(argv) == 0  # some scores: the run did its work, the NaN one is counted
    assert json.loads(out.read_text())["summary"]["total"]["nan"] == 1


# ------------------------------------------------------------------------------------------------ signals
def test_ctrl_c_during_sampling_exits_130_without_a_traceback(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "p.txt").write_text("a red circle\n" * 200)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rewardflow", "sample", "--model", "toy", "--prompts",
                             str(tmp_path / "p.txt"), "--batch-size", "2", "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not list(out.glob("*.png")) and proc.poll() is None and time.monotonic() - t0 < 120:
        time.sleep(0.1)  # interrupt in the middle of sampling (inside torch / diffusers)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1] == "rewardflow: interrupted"
