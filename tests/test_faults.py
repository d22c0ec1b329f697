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
from pathlib import Path

import pytest
import torch

from rewardflow.rewards.base import load_reward
from rewardflow.rewards.judge import JudgeConfigError
from tests._http import send_reply

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
                send_reply(self, *server.respond(self))

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


# ------------------------------------------------------------------------------------------------ a judge outage
class _AllNaN:
    """Rewards of a judge outage: every sample NaN (an image and a video variant)."""

    @staticmethod
    def make(modality: str):
        from rewardflow.rewards.base import Reward

        class AllNaN(Reward):
            name = "all_nan"
            differentiable = True

            def score(self, media, prompts):
                return media.flatten(1).mean(1) * float("nan")

        AllNaN.modality = modality
        return AllNaN()


def _method_names():
    from rewardflow.align.method import list_methods

    return list_methods()


@pytest.mark.parametrize("method", _method_names())
def test_every_method_skips_a_step_whose_rewards_are_all_nan(method, tmp_path, tiny_pipe_dir, monkeypatch):
    """A judge outage (every reward NaN) skips the step with the weights, the optimizer and the schedule unchanged,
    for every registered method (GRPO, DDPO and DRAGON used to stop with "range() arg 3 must not be zero")."""
    from rewardflow.rewards import base as reward_base
    from rewardflow.toy.generator import ToyGenerator
    from tests.trainer_utils import make_trainer, read_metrics

    video = method == "instructvideo"
    if video:
        from rewardflow.toy.video_generator import ToyVideoGenerator

        gen = ToyVideoGenerator.from_pretrained()
    else:
        gen = ToyGenerator.from_pretrained(tiny_pipe_dir)
    reward = _AllNaN.make("video" if video else "image")
    monkeypatch.setitem(reward_base._REGISTRY, "all_nan", lambda **kw: _AllNaN.make("image"))  # latent_reward's judge
    root = Path(__file__).resolve().parents[1]
    extra = {"latent_reward": {"judge": "all_nan"}, "grpo": {"group_size": 2}, "prdp": {"group_size": 2},
             "dragon": {"group_size": 2}, "ddpo": {"samples_per_prompt": 2},
             "instructvideo": {"prompts": str(root / "configs/toy/video_prompts_train.txt")}}.get(method, {})
    tr = make_trainer(tmp_path, tiny_pipe_dir, method, reward=reward, generator=gen, max_steps=1, weight_decay=0.1,
                      **extra)
    with torch.no_grad():  # non-zero weights, so that weight decay alone would change them if a step were taken
        for p in tr.params:
            p.add_(0.01)
    before = [p.detach().clone() for p in tr.params]
    tr.train()
    assert all(torch.equal(a, b) for a, b in zip(before, tr.params)), method
    rec = read_metrics(tmp_path)[-1]
    assert rec["skipped"] == 1 and rec["skip_reason"] in ("no gradient", "non-finite loss"), rec
    assert not getattr(tr.optimizer, "optimizer", tr.optimizer).state  # Adam took no step: no moments yet


# ------------------------------------------------------------------------------------------------ a full disk
@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB filesystem (tmpfs) when this process may mount one (root in a container with the rights),
    else None: the tests then raise the exceptions a full disk raises (RuntimeError from torch.save, SafetensorError
    from safetensors) where the write happens."""
    import os
    import subprocess

    mnt = tmp_path / "disk"
    mnt.mkdir()
    ok = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                                              capture_output=True).returncode == 0
    yield mnt if ok else None
    if ok:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` until ``leave`` bytes are free; returns the filler file."""
    import shutil

    filler = disk / "filler.bin"
    with open(filler, "wb") as fh:
        todo = shutil.disk_usage(disk).free - leave
        while todo > 0:
            n = min(todo, 1 << 20)
            fh.write(b"\0" * n)
            todo -= n
    return filler


@pytest.mark.parametrize("victim", ["trainable.safetensors", "state.pt"])
def test_disk_full_on_checkpoint_removes_the_partial_one_and_keeps_the_earlier(victim, small_disk, tmp_path,
                                                                              tiny_pipe_dir, monkeypatch):
    """A full disk is not always an OSError: torch.save raises RuntimeError, safetensors SafetensorError. Any
    failed write removes the partial checkpoint, keeps the earlier ones, and stops with one message naming the
    path and the free space; with space freed, the same command continues with each step recorded once."""
    import safetensors
    import safetensors.torch

    from rewardflow.align.trainer import CheckpointWriteError, verify_checkpoint
    from tests.trainer_utils import make_trainer, read_metrics

    run = (small_disk or tmp_path) / "run"
    kw = {"save_every": 1, "keep_checkpoints": 5}
    make_trainer(run, tiny_pipe_dir, "rwr", max_steps=2, **kw).train()
    ck = run / "checkpoints"
    before = {p.name: (p / "trainable.safetensors").read_bytes() for p in ck.glob("step_*")}
    if small_disk is not None:  # the real thing: leave room for less than the victim file
        trainable = (ck / "step_0000002" / "trainable.safetensors").stat().st_size
        filler = _fill(small_disk, 16 << 10 if victim == "trainable.safetensors" else trainable + (40 << 10))
    else:
        exc = (safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error "
                                           "28)") if victim == "trainable.safetensors" else
               RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"))

        def full(*a, **k):
            raise exc

        monkeypatch.setattr("safetensors.torch.save_file" if victim == "trainable.safetensors" else "torch.save",
                            full)
    tr = make_trainer(run, tiny_pipe_dir, "rwr", max_steps=4, resume="auto", **kw)
    with pytest.raises(CheckpointWriteError) as e:
        tr.train()
    msg = str(e.value)
    assert f"could not write the checkpoint of step 3: writing {ck / '.tmp_step_0000003' / victim} failed (" in msg
    assert ("SafetensorError" in msg and "[ENOSPC]" in msg) if victim == "trainable.safetensors" else (
        "RuntimeError" in msg)
    assert " free of " in msg and "on that filesystem" in msg  # the free space
    assert "earlier checkpoints are intact (step_0000001, step_0000002" in msg and "resume=auto" in msg
    assert sorted(p.name for p in ck.iterdir()) == ["step_0000001", "step_0000002"]  # no partial directory
    for name, data in before.items():
        assert verify_checkpoint(ck / name) is None and (ck / name / "trainable.safetensors").read_bytes() == data
    if small_disk is not None:
        filler.unlink()
    monkeypatch.undo()
    make_trainer(run, tiny_pipe_dir, "rwr", max_steps=4, resume="auto", **kw).train()
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4]
    assert verify_checkpoint(ck / "step_0000004") is None


@pytest.mark.parametrize("name", ["final", "best"])
def test_a_failed_final_or_best_write_keeps_the_earlier_one(name, tmp_path, tiny_pipe_dir, monkeypatch):
    from rewardflow.align.trainer import CheckpointWriteError
    from tests.trainer_utils import make_trainer

    kw = {"max_steps": 1, "eval_prompts": "toy:heldout", "eval_per_category": 1, "eval_at_start": True,
          "best_metric": "eval_reward", "best_mode": "min"}  # min: the first evaluation is the best so far
    make_trainer(tmp_path, tiny_pipe_dir, "rwr", **kw).train()
    kept = (tmp_path / name / "pytorch_lora_weights.safetensors").read_bytes()
    tr = make_trainer(tmp_path, tiny_pipe_dir, "rwr", **kw)
    real = tr.gen.save_lora

    def save_lora(path, *a, **k):
        if Path(path).name == f".{name}.tmp":  # the disk fills while this directory is written
            real(path, *a, **k)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 120")
        return real(path, *a, **k)

    monkeypatch.setattr(tr.gen, "save_lora", save_lora)
    with pytest.raises(CheckpointWriteError, match=rf"could not write {name}/: writing {tmp_path / f'.{name}.tmp'} "
                                                    r"failed \(RuntimeError: .*\); .* free of .*The partial "
                                                    rf"{name}/ was removed; the earlier {tmp_path / name} is intact"):
        tr.train()
    assert not (tmp_path / f".{name}.tmp").exists() and not (tmp_path / f".{name}.old").exists()
    assert (tmp_path / name / "pytorch_lora_weights.safetensors").read_bytes() == kept


# ------------------------------------------------------------------------------------------------ records
class Killed(BaseException):
    """A simulated kill -9: a BaseException, so no ``except Exception`` cleans up after it."""


RECORD_KW = {"max_steps": 6, "save_every": 2, "eval_every": 2, "eval_at_start": True, "eval_prompts": "toy:heldout",
             "eval_per_category": 1, "report_to": "tensorboard", "keep_checkpoints": 5}


def _records(run: Path) -> dict:
    """Every run log as comparable data: jsonl rows without wall-clock fields, tensorboard (tag -> steps)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = {}
    for f in ("metrics.jsonl", "eval.jsonl"):
        rows[f] = [{k: v for k, v in json.loads(ln).items() if k != "seconds"}
                   for ln in (run / f).read_text().splitlines() if ln.strip()]
    ea = EventAccumulator(str(run / "tensorboard"))
    ea.Reload()
    rows["tensorboard"] = {t: [e.step for e in ea.Scalars(t)] for t in ("loss", "eval_reward")}
    return rows


def _same_records(a: dict, b: dict) -> None:
    assert [r["step"] for r in b["metrics.jsonl"]] == [r["step"] for r in a["metrics.jsonl"]]
    assert [r["step"] for r in b["eval.jsonl"]] == [r["step"] for r in a["eval.jsonl"]]
    for f in ("metrics.jsonl", "eval.jsonl"):
        for ra, rb in zip(a[f], b[f]):
            assert rb == pytest.approx(ra, rel=1e-5, abs=1e-6), (f, ra, rb)
    assert b["tensorboard"] == a["tensorboard"]


@pytest.fixture(scope="module")
def reference_records(tmp_path_factory, tiny_pipe_dir):
    from tests.trainer_utils import make_trainer

    run = tmp_path_factory.mktemp("reference")
    make_trainer(run, tiny_pipe_dir, "rwr", **RECORD_KW).train()
    rec = _records(run)
    assert [r["step"] for r in rec["eval.jsonl"]] == [0, 2, 4, 6] and len(rec["metrics.jsonl"]) == 6
    return rec


KILL_POINTS = {
    # where the kill lands -> (function of the Trainer, which call of it)
    "before the first checkpoint": ("train_step", 2),
    "while writing a checkpoint": ("_write_checkpoint", 2),
    "between an eval and its checkpoint": ("save_checkpoint", 2),
    "right after a checkpoint": ("train_step", 5),
    "in the final evaluation": ("evaluate", 4),
    "while writing final/": ("save_final", 1),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_each_step_is_recorded_exactly_once_after_a_kill_and_a_restart(point, reference_records, tmp_path,
                                                                      tiny_pipe_dir, monkeypatch):
    from rewardflow.align.trainer import Trainer
    from tests.trainer_utils import make_trainer

    fn, nth = KILL_POINTS[point]
    real, calls = getattr(Trainer, fn), []

    def dying(self, *a, **k):
        calls.append(1)
        if len(calls) == nth:
            raise Killed(point)
        return real(self, *a, **k)

    monkeypatch.setattr(Trainer, fn, dying)
    with pytest.raises(Killed):
        make_trainer(tmp_path, tiny_pipe_dir, "rwr", **RECORD_KW).train()
    monkeypatch.undo()
    make_trainer(tmp_path, tiny_pipe_dir, "rwr", resume="auto", **RECORD_KW).train()
    _same_records(reference_records, _records(tmp_path))
    # a finished run run again appends nothing
    make_trainer(tmp_path, tiny_pipe_dir, "rwr", resume="auto", **RECORD_KW).train()
    _same_records(reference_records, _records(tmp_path))


def test_all_damaged_checkpoints_stop_the_run_until_resume_never(reference_records, tmp_path, tiny_pipe_dir,
                                                                 capsys):
    from rewardflow.align.trainer import Trainer
    from tests.trainer_utils import make_trainer

    with pytest.raises(Killed):
        tr = make_trainer(tmp_path, tiny_pipe_dir, "rwr", **RECORD_KW)
        real = tr.train_step
        tr.train_step = lambda: (_ for _ in ()).throw(Killed()) if tr.step == 5 else real()
        tr.train()
    ck = tmp_path / "checkpoints"
    for p in ck.glob("step_*"):  # every checkpoint damaged on disk
        (p / "state.pt").write_bytes(b"torn")
    with pytest.warns(RuntimeWarning, match="skipping checkpoint"), pytest.raises(
            ValueError, match=rf"every checkpoint in {ck} is damaged \(step_0000002: state.pt has 4 bytes but the "
                              r"manifest says .*\); .*Rerun with resume=never to start over"):
        make_trainer(tmp_path, tiny_pipe_dir, "rwr", resume="auto", **RECORD_KW).train()
    assert Trainer is not None and sorted(p.name for p in ck.glob("step_*")) == ["step_0000002", "step_0000004"]
    make_trainer(tmp_path, tiny_pipe_dir, "rwr", resume="never", **RECORD_KW).train()
    assert "resume=never: starting over; removed the earlier run's checkpoints (step_0000002, step_0000004)" in (
        capsys.readouterr().out)
    _same_records(reference_records, _records(tmp_path))


def test_resuming_with_another_lora_rank_names_the_tensor(tmp_path, tiny_pipe_dir):
    from tests.trainer_utils import make_trainer

    make_trainer(tmp_path, tiny_pipe_dir, "rwr", max_steps=1, lora_rank=4).train()
    tr = make_trainer(tmp_path, tiny_pipe_dir, "rwr", max_steps=2, lora_rank=8, resume="auto")
    with pytest.raises(ValueError, match=r"was trained with other values of lora_rank: lora_rank \(4 -> 8\)"):
        tr.train()  # the changed key, named before anything loads
    tr = make_trainer(tmp_path, tiny_pipe_dir, "rwr", max_steps=2, lora_rank=8, resume="auto",
                      resume_allow_changes=True)
    with pytest.raises(ValueError, match=r"checkpoint .*step_0000001: tensor \S+lora_A\S* has shape \(4, \d+\) but "
                                         r"this run's has \(8, \d+\): it was saved with a different lora_rank / "
                                         r"lora_targets / model \(this run: lora_rank=8\)"):
        tr.train()


# ------------------------------------------------------------------------------------------------ SIGTERM / SIGINT
def _env():
    import os

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _logged_steps(run: Path) -> list[int]:
    f = run / "metrics.jsonl"
    out = []
    for ln in (f.read_text().splitlines() if f.is_file() else []):
        try:
            out.append(int(json.loads(ln)["step"]))
        except (ValueError, KeyError):
            pass
    return out


def _signal_when(proc, run: Path, step: int, *signals, gap: float = 0.3, timeout: float = 240) -> None:
    t0 = time.monotonic()
    while proc.poll() is None and max(_logged_steps(run), default=0) < step and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be signalled"
    for i, sig in enumerate(signals):
        if i:
            time.sleep(gap)
        proc.send_signal(sig)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_finishes_the_step_writes_a_checkpoint_and_says_how_to_resume(sig, tmp_path, tiny_pipe_dir):
    import signal
    import subprocess
    import sys

    from rewardflow.align.trainer import verify_checkpoint
    from tests.trainer_utils import write_train_yaml

    signum = getattr(signal, sig)
    run = tmp_path / "run"
    cfg = write_train_yaml(tmp_path / "c.yaml", "rwr", tiny_pipe_dir, run, max_steps=500, save_every=0)
    cmd = [sys.executable, "-m", "rewardflow", "train", str(cfg)]
    with open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
        _signal_when(proc, run, 2, signum)
        rc = proc.wait(timeout=120)
    text = (tmp_path / "err.txt").read_text()
    assert rc == 128 + signum, text[-3000:]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    steps = _logged_steps(run)
    n = steps[-1]
    ck = run / "checkpoints" / f"step_{n:07d}"
    assert text.strip().splitlines()[-1] == (f"rewardflow: stopped by {sig} after step {n}; checkpoint {ck} written. "
                                             "Rerun the same command to continue from it (resume=auto)")
    assert f"[rewardflow] {sig}: finishing the current step, then writing a checkpoint" in text
    assert steps == list(range(1, n + 1)) and verify_checkpoint(ck) is None
    res = subprocess.run([*cmd, f"max_steps={n + 1}"], env=_env(), capture_output=True, text=True, timeout=240)
    assert res.returncode == 0 and f"resumed from {ck} at step {n}" in res.stdout, res.stderr[-3000:]
    assert _logged_steps(run) == list(range(1, n + 2))


def test_a_second_signal_stops_at_once(tmp_path, tiny_pipe_dir):
    import signal
    import subprocess
    import sys

    from tests.trainer_utils import write_train_yaml

    run = tmp_path / "run"
    # slow steps (many samples), so that the second signal lands while the first step is still running
    cfg = write_train_yaml(tmp_path / "c.yaml", "rwr", tiny_pipe_dir, run, max_steps=500, save_every=0,
                           batch_size=16, sample_steps=8)
    with open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "rewardflow", "train", str(cfg)], env=_env(),
                                stdout=subprocess.DEVNULL, stderr=err)
        _signal_when(proc, run, 1, signal.SIGTERM, signal.SIGTERM, gap=0.2)
        rc = proc.wait(timeout=60)
    text = (tmp_path / "err.txt").read_text()
    assert rc == -signal.SIGTERM, text[-3000:]  # the default action: ended by the signal itself
    assert "[rewardflow] SIGTERM again: stopping now, without a checkpoint" in text and "Traceback" not in text
    assert not list((run / "checkpoints").glob("step_*"))


def test_sigterm_stops_two_processes_with_one_checkpoint(tmp_path, tiny_pipe_dir):
    """torchrun forwards SIGTERM to its workers: both finish the step, agree on it (an all-reduce), write one
    checkpoint together and exit; process 0 prints the line."""
    import signal
    import socket
    import subprocess
    import sys

    from rewardflow.align.trainer import verify_checkpoint
    from tests.trainer_utils import write_train_yaml

    run = tmp_path / "run"
    cfg = write_train_yaml(tmp_path / "c.yaml", "draft", tiny_pipe_dir, run, max_steps=500, save_every=0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port, "-m",
           "rewardflow", "train", str(cfg)]
    root = Path(__file__).resolve().parents[1]
    with open(tmp_path / "out.txt", "w") as out:
        proc = subprocess.Popen(cmd, env=_env(), cwd=root, stdout=out, stderr=subprocess.STDOUT)
        _signal_when(proc, run, 2, signal.SIGTERM, timeout=300)
        proc.wait(timeout=120)
    text = (tmp_path / "out.txt").read_text()
    steps = _logged_steps(run)
    n = steps[-1]
    ck = run / "checkpoints" / f"step_{n:07d}"
    assert text.count(f"rewardflow: stopped by SIGTERM after step {n}; checkpoint {ck} written") == 1, text[-4000:]
    assert verify_checkpoint(ck) is None and steps == list(range(1, n + 1))
    assert "CheckpointWriteError" not in text and "collective" not in text.lower()
    # the workers print no traceback; torchrun itself reports the signal it got as a SignalException traceback
    assert text.count("Traceback") <= 1
    if "Traceback" in text:
        tb = text.split("Traceback")[-1]
        assert "SignalException" in tb and "rewardflow/" not in tb, tb


@pytest.mark.slow
def test_kill_9_at_random_points_keeps_every_record_exactly_once(tmp_path, tiny_pipe_dir):
    """``rewardflow train`` killed with SIGKILL at random moments (inside steps, evaluations, checkpoint writes),
    then run again until it finishes: metrics.jsonl, eval.jsonl and the tensorboard events hold each step exactly
    once, with the uninterrupted run's values."""
    import os
    import random
    import signal
    import subprocess
    import sys

    from tests.trainer_utils import write_train_yaml

    kw = dict(max_steps=10, save_every=2, eval_every=2, eval_at_start=True, eval_prompts="toy:heldout",
              eval_per_category=1, report_to="tensorboard", keep_checkpoints=3, lr=1e-3)
    runs = {n: tmp_path / n for n in ("ref", "faulty")}
    cmds = {n: [sys.executable, "-m", "rewardflow", "train",
                str(write_train_yaml(tmp_path / f"{n}.yaml", "rwr", tiny_pipe_dir, runs[n], **kw))] for n in runs}
    res = subprocess.run(cmds["ref"], env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rng, kills = random.Random(25), 0
    for _ in range(4):
        proc = subprocess.Popen(cmds["faulty"], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = min(9, max(_logged_steps(runs["faulty"]), default=0) + rng.randint(1, 3))
        t0 = time.monotonic()
        while proc.poll() is None and max(_logged_steps(runs["faulty"]), default=0) < target and \
                time.monotonic() - t0 < 300:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
    assert kills >= 3
    res = subprocess.run(cmds["faulty"], env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    _same_records(_records(runs["ref"]), _records(runs["faulty"]))
