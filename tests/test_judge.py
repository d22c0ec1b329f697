"""The black-box VLM judge against a fake OpenAI-compatible server on loopback."""

import base64
import io
import json
import logging
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from rewardflow.rewards.base import finite_mask, load_reward
from rewardflow.rewards.judge import JudgeConfigError, parse_preference, parse_rating
from tests._http import send_reply

KEY = "sk-test-SECRET-5f3a9c"


def decode_data_url(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def reply(text: str) -> tuple[int, dict, dict]:
    return 200, {"id": "x", "object": "chat.completion",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}, {}


class FakeServer:
    """``responder(request_json, headers, n)`` -> ``(status, body, headers)``; body dict (JSON), bytes, or the
    string "hang" (never answers until the server stops)."""

    def __init__(self, responder, delay: float = 0.0):
        self.responder, self.delay = responder, delay
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    n = len(server.requests)
                    server.requests.append({"t": time.monotonic(), "path": self.path, "headers": dict(self.headers),
                                            "json": body})
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                done = False
                try:
                    if server.delay:
                        time.sleep(server.delay)
                    status, payload, headers = server.responder(body, dict(self.headers), n)
                    if payload == "hang":
                        server.stop.wait(10)
                        return
                    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                    # leave "in flight" before the reply goes out: once the client has it, it may send its next
                    # request before this thread runs again (a race that counted 3 in flight under load)
                    with server.lock:
                        server.in_flight -= 1
                    done = True
                    send_reply(self, status, headers, data)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    if not done:
                        with server.lock:
                            server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def make(responder, delay=0.0):
        servers.append(FakeServer(responder, delay))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def judge(server, **kw):
    kw.setdefault("api_key_env", "R3_TEST_JUDGE_KEY")
    kw.setdefault("timeout", 2.0)
    kw.setdefault("backoff", 0.01)
    return load_reward("vlm_judge", base_url=server.url, model="judge-model", **kw)


def brightness_rating(request_json) -> int:
    """The fake judge: rating 1..10 from the mean brightness of the image it received."""
    img = decode_data_url(request_json["messages"][0]["content"][1]["image_url"]["url"])
    return 1 + int(round(9 * img.mean() / 255))


def test_pointwise_request_format_and_scores(serve, monkeypatch):
    monkeypatch.setenv("R3_TEST_JUDGE_KEY", KEY)
    srv = serve(lambda j, h, n: reply(f"The image is fine.\nFinal Score: {brightness_rating(j)}"))
    levels = torch.tensor([0.0, 0.3, 0.55, 1.0])
    media = levels.view(4, 1, 1, 1).expand(4, 3, 16, 12).clone()
    media[1, :, :2, :2] = 0.9  # a non-uniform image, checked pixel-exactly below
    prompts = ["a red cube", "a dog", "a cat", "the sea"]
    scores = judge(srv)(media, prompts)

    assert len(srv.requests) == 4
    by_prompt = {}
    for r in srv.requests:
        assert r["path"] == "/v1/chat/completions"
        assert r["headers"]["Authorization"] == f"Bearer {KEY}"
        body = r["json"]
        assert body["model"] == "judge-model" and body["temperature"] == 0.0
        (msg,) = body["messages"]
        assert msg["role"] == "user" and [c["type"] for c in msg["content"]] == ["text", "image_url"]
        text = msg["content"][0]["text"]
        assert "Final Score: N" in text and "from 1 to 10" in text
        prompt = next(p for p in prompts if f"Prompt: {p}\n" in text)
        by_prompt[prompt] = decode_data_url(msg["content"][1]["image_url"]["url"])
    for i, p in enumerate(prompts):  # the PNG sent is the DDPO uint8 quantization of the input, exactly
        want = (media[i].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
        np.testing.assert_array_equal(by_prompt[p], want)
    expected = [(1 + round(9 * by_prompt[p].mean() / 255) - 1) / 9 for p in prompts]
    assert scores.dtype == torch.float32 and scores.shape == (4,)
    np.testing.assert_allclose(scores.numpy(), expected, atol=1e-6)
    assert scores[0] == 0.0 and scores[3] == 1.0


def test_parsers_are_strict():
    assert parse_rating("looks good\nFinal Score: 7", 1, 10) == 7.0
    assert parse_rating("Final Score: 7.5", 1, 10) == 7.5
    for bad in ["final score: 7", "Final Score: 11", "Final Score: 0", "Final Score: 7\nthanks",
                "Final Score: 3\nFinal Score: 7", "Score: 7", "", "Final Score: seven", "7"]:
        assert parse_rating(bad, 1, 10) is None, bad
    assert parse_rating('analysis...\n{"RATING": 4}', 1, 5, "json") == 4.0
    for bad in ['{"RATING": "4"}', '{"RATING": 4, "x": 1}', '{"RATING": 6}', '{"RATING": true}', "RATING: 4",
                '{"RATING": 4}\n{"RATING": 3}']:
        assert parse_rating(bad, 1, 5, "json") is None, bad
    assert parse_preference("A is sharper.\n[[A>B]]") == ("A", 1.0)
    assert parse_preference("[[B>A]]") == ("B", 0.0)
    assert parse_preference("[[A=B=Bad]]") == ("tie", 0.5)
    for bad in ["[[A>B]] wait, [[B>A]]", "[[A>B]]\nok", "A>B", "[[A>>B]]", "[[a>b]]"]:
        assert parse_preference(bad) is None, bad


def test_malformed_replies_give_nan_not_zero(serve, caplog):
    replies = {"p0": reply("Final Score: 4"), "p1": reply("final score: 4"), "p2": reply("Final Score: 42"),
               "p3": (200, b"not json at all", {}), "p4": (200, {"choices": []}, {}),
               "p5": reply("Final Score: 4\nHope this helps!"), "p6": (400, {"error": "image too large"}, {})}

    def responder(j, h, n):
        text = j["messages"][0]["content"][0]["text"]
        return replies[next(p for p in replies if f"Prompt: {p}\n" in text)]

    srv = serve(responder)
    r = judge(srv)
    with caplog.at_level(logging.WARNING, logger="rewardflow.rewards.judge"):
        s = r(torch.rand(7, 3, 8, 8), list(replies))
    assert s[0].item() == pytest.approx(3 / 9)
    assert torch.isnan(s[1:]).all()
    assert finite_mask(s).tolist() == [True] + [False] * 6
    assert len(srv.requests) == 7  # none of these is retried
    assert "Authorization" not in srv.requests[0]["headers"]  # no key in the environment: no header
    assert r.last_replies[1].raw_text == "final score: 4" and not r.last_replies[1].parse_ok
    assert "HTTP 400" in r.last_replies[6].error and "6 of 7 queries gave no score" in caplog.text


def test_hanging_server_times_out_retries_with_backoff_then_nan(serve, caplog):
    srv = serve(lambda j, h, n: (200, "hang", {}))
    r = judge(srv, timeout=0.3, max_retries=2, backoff=0.1)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="rewardflow.rewards.judge"):
        s = r(torch.rand(1, 3, 8, 8), ["a cat"])
    elapsed = time.monotonic() - t0
    assert torch.isnan(s).all()
    assert len(srv.requests) == 3  # 1 + max_retries attempts
    t = [q["t"] for q in srv.requests]
    assert t[1] - t[0] >= 0.3 + 0.1 - 0.02 and t[2] - t[1] >= 0.3 + 0.2 - 0.02  # timeout + exponential backoff
    assert elapsed < 3.0
    assert "timed out after 0.3s" in caplog.text and "gave up after 3 attempts" in r.last_replies[0].error


def test_unreachable_server_is_retried_then_nan(caplog):
    import socket

    with socket.socket() as sock:  # a free port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    r = load_reward("vlm_judge", base_url=f"http://127.0.0.1:{port}/v1", model="m", api_key_env=None,
                    max_retries=2, backoff=0.01)
    with caplog.at_level(logging.WARNING, logger="rewardflow.rewards.judge"):
        s = r(torch.rand(2, 3, 8, 8), ["a", "b"])
    assert torch.isnan(s).all() and caplog.text.count("ConnectionRefusedError); retry") == 4


def test_5xx_and_429_are_retried_then_succeed(serve):
    script = [(503, {"error": "overloaded"}, {}), (429, {"error": "slow down"}, {"Retry-After": "0.25"}),
              reply("Final Score: 10")]
    srv = serve(lambda j, h, n: script[n])
    s = judge(srv, max_retries=3, backoff=0.05)(torch.rand(1, 3, 8, 8), ["x"])
    assert s.tolist() == [1.0] and len(srv.requests) == 3
    t = [q["t"] for q in srv.requests]
    assert t[1] - t[0] >= 0.05 - 0.01 and t[2] - t[1] >= 0.25 - 0.01  # Retry-After honored over the 0.1 s backoff


def test_concurrency_limit_is_respected(serve):
    srv = serve(lambda j, h, n: reply("Final Score: 5"), delay=0.15)
    s = judge(srv, max_concurrency=2)(torch.rand(6, 3, 8, 8), ["x"] * 6)
    assert torch.isfinite(s).all() and len(srv.requests) == 6
    assert srv.max_in_flight == 2  # parallel, but never more than the limit


def test_api_key_never_leaks(serve, monkeypatch, caplog):
    monkeypatch.setenv("R3_TEST_JUDGE_KEY", KEY)
    # a hostile/buggy server echoes the Authorization header back in its error bodies
    script = [lambda h: (500, {"error": f"bad header {h['Authorization']}"}, {}),
              lambda h: (400, {"error": f"rejected {h['Authorization']}"}, {}),
              lambda h: (200, f"garbage {h['Authorization']}".encode(), {})]
    srv = serve(lambda j, h, n: script[min(n, 2)](h))
    r = judge(srv, max_retries=1, max_concurrency=1)
    with caplog.at_level(logging.DEBUG):
        s = r(torch.rand(2, 3, 8, 8), ["a", "b"])
    assert torch.isnan(s).all()
    assert srv.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"  # the key is sent...
    errors = " ".join(str(x.error) for x in r.last_replies)
    assert "rejected" in errors and "garbage" in errors
    for text in (caplog.text, errors, repr(r), str(r), repr(r.client), str(vars(r.client))):
        assert KEY not in text  # ...but never logged, stored, or shown

    srv401 = serve(lambda j, h, n: (401, {"error": f"invalid key {h['Authorization']}"}, {}))
    with pytest.raises(JudgeConfigError, match=r"HTTP 401.*R3_TEST_JUDGE_KEY") as e:
        judge(srv401)(torch.rand(1, 3, 8, 8), ["a"])
    assert KEY not in str(e.value) and len(srv401.requests) == 1


def brighter_wins(j, h, n):
    a, b = (decode_data_url(c["image_url"]["url"]).mean() for c in j["messages"][0]["content"][1:])
    return reply("[[A>B]]" if a > b else "[[B>A]]" if b > a else "[[A=B=Good]]")


def test_pairwise_compare_undoes_swaps(serve):
    srv = serve(brighter_wins)
    r = judge(srv, mode="pairwise", swap="random", seed=3)
    a = torch.tensor([0.9, 0.15, 0.5, 0.2, 0.7, 0.4]).view(6, 1, 1, 1).expand(6, 3, 8, 8)
    b = torch.tensor([0.1, 0.85, 0.5, 0.8, 0.3, 0.65]).view(6, 1, 1, 1).expand(6, 3, 8, 8)
    p = r.compare(a, b, ["x"] * 6)
    assert p.tolist() == [1.0, 0.0, 0.5, 0.0, 1.0, 0.0]
    # both presentation orders were used (the seed swaps some queries), each query with the two images
    pairs = {(round(float(a[i, 0, 0, 0]), 2), round(float(b[i, 0, 0, 0]), 2)) for i in (0, 1, 3, 4, 5)}
    shown = [tuple(round(decode_data_url(c["image_url"]["url"]).mean() / 255, 2)
                   for c in q["json"]["messages"][0]["content"][1:]) for q in srv.requests]
    assert all(len(x) == 2 for x in shown)
    straight = sum(x in pairs for x in shown)
    swapped = sum(x[::-1] in pairs for x in shown)
    assert straight + swapped == 5 and straight > 0 and swapped > 0
    assert "[[A=B=Bad]]" in srv.requests[0]["json"]["messages"][0]["content"][0]["text"]

    srv2 = serve(brighter_wins)
    p2 = judge(srv2, mode="pairwise", swap="both").compare(a, b, ["x"] * 6)
    assert p2.tolist() == p.tolist() and len(srv2.requests) == 12


def test_pairwise_reward_is_round_robin_win_rate(serve):
    srv = serve(brighter_wins)
    r = judge(srv, mode="pairwise")
    media = torch.tensor([0.2, 0.9, 0.5, 0.7, 0.3]).view(5, 1, 1, 1).expand(5, 3, 8, 8)
    s = r(media, ["cat", "cat", "cat", "dog", "owl"])
    assert s[:3].tolist() == [0.0, 1.0, 0.5]  # 3 images of "cat": 3 comparisons
    assert s[3:].isnan().all()  # no opponent with the same prompt
    assert len(srv.requests) == 3


def test_configuration_errors():
    with pytest.raises(ValueError, match="needs base_url"):
        load_reward("vlm_judge")
    with pytest.raises(ValueError, match="unknown placeholder"):
        load_reward("vlm_judge", base_url="http://127.0.0.1:9/v1", model="m", template="Rate {promt}")
    with pytest.raises(ValueError, match="mode must be"):
        load_reward("vlm_judge", base_url="http://127.0.0.1:9/v1", model="m", mode="listwise")
    r = load_reward("vlm_judge", base_url="http://127.0.0.1:9/v1", model="m", api_key_env=None)
    assert r.differentiable is False
    with pytest.raises(ValueError, match="black-box"):
        from rewardflow.rewards.base import require_differentiable

        require_differentiable(r, "DRaFT")


def test_nan_is_masked_through_weighted_reward(serve):
    srv = serve(lambda j, h, n: reply("Final Score: 10") if n % 2 == 0 else reply("no idea"))
    from rewardflow.rewards.combine import WeightedReward

    w = WeightedReward([judge(srv, max_concurrency=1), load_reward("jpeg_incompressibility")], [0.0, 1.0])
    s = w(torch.rand(4, 3, 8, 8), ["x"] * 4)
    assert finite_mask(s).tolist() == [True, False, True, False]  # even a zero weight does not turn NaN into 0
    assert math.isnan(w.last_components["vlm_judge#0"][1])
