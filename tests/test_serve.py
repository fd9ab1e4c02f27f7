"""`tinylm serve` through the real `openai` client (and raw httpx for what the client would not
send), against servers started in this process on free loopback ports with a tiny random model.

References: the library's own generate_text with the same seed (what `tinylm generate --seed`
prints), and each request's solo result for the concurrent runs.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from conftest import make_model, make_text  # noqa: E402
from tinylm.generate.chat import format_qa  # noqa: E402
from tinylm.generate.engine import SamplingConfig  # noqa: E402
from tinylm.generate.text import generate_text  # noqa: E402
from tinylm.serve.app import ServerState, build_app  # noqa: E402
from tinylm.serve.batcher import Batcher  # noqa: E402
from tinylm.serve.command import open_socket  # noqa: E402
from tinylm.tokenizers import CharTokenizer  # noqa: E402

TOK = CharTokenizer.train(make_text(3000, seed=4))
LIMIT = 64  # the servers' per-request token limit (the small-slot server allows more)


class Running:
    """A server on a free loopback port, in a thread of this process."""

    def __init__(self, model, slots=32, queue=64, api_key=None, max_tokens=LIMIT, max_body=4096, prefill_rows=1):
        batcher = Batcher(model, TOK, slots=slots, max_queue=queue, prefill_rows=prefill_rows)
        self.state = ServerState(batcher=batcher, tokenizer=TOK,
                                 model_name="tiny", max_tokens=max_tokens, max_body=max_body, api_key=api_key)
        self.sock = open_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(build_app(self.state), log_level="error"))
        self.state.batcher.start()
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.02)

    def client(self, key="none", cls=None):
        return (cls or openai.OpenAI)(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=30)

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.state.batcher.stop()
        self.sock.close()


@pytest.fixture(scope="module")
def model():
    return make_model(seed=2, vocab_size=TOK.vocab_size, n_layer=1)


@pytest.fixture(scope="module")
def srv(model):
    s = Running(model, prefill_rows=4)  # prompts of equal length share a prefill (of 4 rows, padded)
    yield s
    s.close()


def reference(model, prompt, tokens, special=False, **kw):
    cfg = SamplingConfig(max_new_tokens=tokens, **kw)
    return generate_text(model, TOK, prompt, cfg, allow_special=special, unknown="replace")


# ---------------------------------------------------------------- answers

def test_completion_equals_library_generation(srv, model):
    c = srv.client()
    for kw in (dict(temperature=0.0), dict(temperature=0.9, seed=3), dict(temperature=1.2, seed=11, top_p=0.8)):
        r = c.completions.create(model="tiny", prompt="the king", max_tokens=40, **kw)
        assert r.choices[0].text == reference(model, "the king", 40, **kw)
        assert r.usage.prompt_tokens == 8 and r.usage.completion_tokens >= len(r.choices[0].text) > 0
    r = c.completions.create(model="tiny", prompt="the sea", max_tokens=30, seed=5, extra_body={"top_k": 5})
    assert r.choices[0].text == reference(model, "the sea", 30, seed=5, top_k=5)


def test_streaming_reassembles_to_the_whole_answer(srv):
    c = srv.client()
    for seed in (1, 2):
        whole = c.completions.create(model="tiny", prompt="she said", max_tokens=50, seed=seed)
        pieces = list(c.completions.create(model="tiny", prompt="she said", max_tokens=50, seed=seed, stream=True))
        assert "".join(p.choices[0].text for p in pieces if p.choices) == whole.choices[0].text
        assert [p.choices[0].finish_reason for p in pieces if p.choices and p.choices[0].finish_reason] == [whole.choices[0].finish_reason]
        msgs = [{"role": "user", "content": "who went to the well?"}]
        whole = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=30, seed=seed)
        stream = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=30, seed=seed, stream=True,
                                           stream_options={"include_usage": True})
        chunks = list(stream)
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == whole.choices[0].message.content
        assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_chat_uses_the_qa_format_and_plain_user_text(srv, model):
    c = srv.client()
    r = c.chat.completions.create(model="tiny", messages=[{"role": "system", "content": "be brief"},
                                                          {"role": "user", "content": "who?"}], max_tokens=20, seed=4)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == reference(model, format_qa("who?"), 20, special=True, seed=4)
    turns = [{"role": "user", "content": "who?"}, {"role": "assistant", "content": "the king"},
             {"role": "user", "content": "and then?"}]
    r = c.chat.completions.create(model="tiny", messages=turns, max_tokens=20, seed=4)
    prompt = format_qa("who?", "the king") + format_qa("and then?")
    assert r.choices[0].message.content == reference(model, prompt, 20, special=True, seed=4)
    assert r.usage.prompt_tokens == len(TOK.encode(prompt, allow_special=True, unknown="replace"))
    # user text never becomes special tokens: "<EOS>" is five characters
    r = c.completions.create(model="tiny", prompt="<EOS>", max_tokens=1)
    assert r.usage.prompt_tokens == 5


def test_n_choices_use_seed_plus_index(srv, model):
    r = srv.client().completions.create(model="tiny", prompt="the", max_tokens=20, seed=7, n=3)
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    for i, ch in enumerate(r.choices):
        assert ch.text == reference(model, "the", 20, seed=7 + i)


def test_32_concurrent_requests_each_get_their_solo_text(srv):
    prompts = ["the king", "a far land", "she said", "we shall", "the rain", "old well", "Summer", "the men"]
    jobs = [dict(prompt=prompts[i % 8], max_tokens=20 + i % 24, seed=100 + i, temperature=[0.0, 0.7, 1.0, 1.4][i % 4],
                 top_p=[1.0, 0.9][i % 2], extra_body={"top_k": [0, 3, 0, 10][i // 8]}) for i in range(32)]
    c = srv.client()
    solo = [c.completions.create(model="tiny", **j).choices[0].text for j in jobs]
    srv.state.batcher.peak = 0

    async def one(ac, i, j):
        if i % 2:  # half of them stream
            stream = await ac.completions.create(model="tiny", stream=True, **j)
            return "".join([p.choices[0].text async for p in stream if p.choices])
        return (await ac.completions.create(model="tiny", **j)).choices[0].text

    async def crowd():
        async with srv.client(cls=openai.AsyncOpenAI) as ac:
            return await asyncio.gather(*(one(ac, i, j) for i, j in enumerate(jobs)))

    together = asyncio.run(crowd())
    assert together == solo
    assert srv.state.batcher.peak >= 8, "the requests did not share the batch"
    assert len(set(solo)) > 16  # the settings and seeds really differ


def test_models_and_health(srv):
    assert [m.id for m in srv.client().models.list()] == ["tiny"]
    h = httpx.get(srv.url + "/health").json()
    assert h["status"] == "ok" and h["slots"] == 32


# ---------------------------------------------------------------- bad requests

def _post(url, body, path="/v1/completions", headers=None):
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(url + path, content=content, headers={"content-type": "application/json", **(headers or {})})


BAD = [
    ("malformed JSON", b'{"prompt": "the", ', None, 400),
    ("not UTF-8", b'{"prompt": "\xff"}', None, 400),
    ("not an object", [1, 2], None, 400),
    ("unknown field", {"prompt": "the", "max_token": 5}, "max_token", 400),
    ("wrong type", {"prompt": "the", "max_tokens": "5"}, "max_tokens", 400),
    ("bool for int", {"prompt": "the", "max_tokens": True}, "max_tokens", 400),
    ("over the limit", {"prompt": "the", "max_tokens": LIMIT + 1}, "max_tokens", 400),
    ("negative temperature", {"prompt": "the", "temperature": -0.5}, "temperature", 400),
    ("top_p zero", {"prompt": "the", "top_p": 0}, "top_p", 400),
    ("empty prompt", {"prompt": ""}, "prompt", 400),
    ("token prompt", {"prompt": [1, 2, 3]}, "prompt", 400),
    ("too many stops", {"prompt": "the", "stop": list("abcde")}, "stop", 400),
    ("unsupported", {"prompt": "the", "best_of": 3}, "best_of", 400),
    ("bad logit_bias", {"prompt": "the", "logit_bias": {"99999": 1}}, "logit_bias", 400),
    ("oversized body", {"prompt": "x" * 5000}, None, 413),
    ("deep JSON", b"[" * 100 + b"]" * 100, None, 400),
]


@pytest.mark.parametrize("what, body, param, status", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(srv, what, body, param, status):
    r = _post(srv.url, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] == "invalid_request_error" and err["param"] == param
    assert srv.client().completions.create(model="tiny", prompt="the", max_tokens=2).choices[0].text is not None


def test_bad_chat_requests(srv):
    for body in ({"messages": []}, {"messages": [{"role": "robot", "content": "x"}]},
                 {"messages": [{"role": "user", "content": 5}]}, {"messages": [{"role": "assistant", "content": "x"}]},
                 {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": LIMIT + 1}):
        r = _post(srv.url, body, "/v1/chat/completions")
        assert r.status_code == 400 and r.json()["error"]["message"], body
    with pytest.raises(openai.BadRequestError):
        srv.client().chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], temperature=-1)
    assert httpx.get(srv.url + "/v1/nothing").status_code == 404
    assert httpx.get(srv.url + "/v1/completions").status_code == 405


def test_api_key(model, monkeypatch):
    s = Running(model, slots=2, api_key="sesame")
    try:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic sesame"}):
            r = _post(s.url, {"prompt": "the", "max_tokens": 2}, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(s.url + "/v1/models").status_code == 401
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").completions.create(model="tiny", prompt="the", max_tokens=2)
        assert s.client("sesame").completions.create(model="tiny", prompt="the", max_tokens=2).choices
        assert httpx.get(s.url + "/health").status_code == 200  # no secrets there
    finally:
        s.close()


# ---------------------------------------------------------------- slots and the queue

def _wait(cond, what, timeout=10.0):
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, what
        time.sleep(0.01)


def test_full_queue_503_and_disconnect_frees_the_slot(model):
    s = Running(model, slots=1, queue=1, max_tokens=100_000)
    health = lambda: httpx.get(s.url + "/health").json()  # noqa: E731
    try:
        never_ends = {"prompt": "the", "max_tokens": 100_000, "stream": True, "seed": 1,
                      "logit_bias": {str(TOK.eos_id): -100}}  # no EOS: it would run for a long time
        with httpx.Client(timeout=30) as hc:
            with hc.stream("POST", s.url + "/v1/completions", json=never_ends) as long_one:
                lines = long_one.iter_lines()
                assert next(line for line in lines if line.startswith("data: "))  # it holds the one slot
                waiting = {}
                t = threading.Thread(target=lambda: waiting.update(r=_post(s.url, {"prompt": "the", "max_tokens": 3})))
                t.start()
                _wait(lambda: health()["queued"] == 1, "the second request did not queue")
                r = _post(s.url, {"prompt": "the", "max_tokens": 3})
                assert r.status_code == 503 and r.json()["error"]["code"] == "server_overloaded"
                assert t.is_alive()  # still waiting behind the long one
                closed_at = time.time()
            # the client went away mid-stream: its slot goes to the waiting request at once
            t.join(timeout=10)
            assert time.time() - closed_at < 10 and waiting["r"].status_code == 200
            _wait(lambda: health()["busy"] == 0, "the slot was not freed")
        assert s.client().completions.create(model="tiny", prompt="the", max_tokens=3).choices  # and a later one too
    finally:
        s.close()


def test_disconnect_of_a_non_streamed_request_frees_its_slot(model):
    s = Running(model, slots=1, queue=4, max_tokens=100_000)
    try:
        body = json.dumps({"prompt": "the", "max_tokens": 100_000, "logit_bias": {str(TOK.eos_id): -100}})

        def hang_up():
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(s.url + "/v1/completions", content=body, timeout=httpx.Timeout(30, read=1.0),
                           headers={"content-type": "application/json"})

        hang_up()  # gives up after a second, closing the connection
        _wait(lambda: httpx.get(s.url + "/health").json()["busy"] == 0, "the slot was not freed")
        assert s.client().completions.create(model="tiny", prompt="the", max_tokens=3).choices
    finally:
        s.close()


def test_stop_strings_and_echo(srv, model):
    c = srv.client()
    full = c.completions.create(model="tiny", prompt="the", max_tokens=40, seed=9).choices[0].text
    stop = full[5:7]
    assert stop and full.find(stop) >= 0
    r = c.completions.create(model="tiny", prompt="the", max_tokens=40, seed=9, stop=[stop])
    assert r.choices[0].text == full[:full.find(stop)] and r.choices[0].finish_reason == "stop"
    r = c.completions.create(model="tiny", prompt="the", max_tokens=40, seed=9, echo=True)
    assert r.choices[0].text == "the" + full


# ---------------------------------------------------------------- wiring

def test_the_library_does_not_import_the_server():
    import subprocess
    import sys

    from conftest import REPO, cli_env

    code = ("import sys, tinylm, tinylm.generate, tinylm.model, tinylm.train, tinylm.cli; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn', 'fastapi') "
            "or m in ('tinylm.serve.app', 'tinylm.serve.batcher')]; print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(REPO), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_adapter_flag_calls_load_adapter(model_file, monkeypatch):
    lora = pytest.importorskip("tinylm.lora", reason="tinylm.lora is not on this branch: --adapter reports that instead")
    from tinylm.serve.command import load_served_model

    calls = []

    def fake_load_adapter(model, path):
        calls.append(path)
        return model

    monkeypatch.setattr(lora, "load_adapter", fake_load_adapter)
    args = SimpleNamespace(model=str(model_file), adapter="a.lora", device="cpu", threads=1)
    loaded, _ = load_served_model(args)
    assert calls == ["a.lora"]


def test_sample_rows_equals_sample_next_row_by_row():
    """The batcher's sampler, settings per row, against the engine's sample_next run on each row alone."""
    from tinylm.generate.sampling import row_keys, sample_next
    from tinylm.serve.batcher import sample_rows

    torch.manual_seed(0)
    S, V = 12, 50
    logits = torch.randn(S, V)
    logits[3, :10] = 2.0  # ties at the top-k boundary
    temps = [0.0, 0.5, 1.0, 1.5] * 3
    ks = [0, 1, 5, 10, 0, 3, 60, 0, 2, 0, 7, 10]
    ps = [1.0, 0.9, 0.5, 1.0, 0.3, 1.0, 0.95, 0.1, 1.0, 0.8, 1.0, 0.6]
    seeds = list(range(100, 100 + S))
    bias = torch.zeros(S, V)
    bias[5, 7] = 5.0
    for step in (0, 3, 17):
        got = sample_rows(logits, torch.tensor(temps), torch.tensor(ks), torch.tensor(ps), bias,
                          torch.cat([row_keys(sd, 1) for sd in seeds]), torch.full((S,), step))
        for r in range(S):
            cfg = SamplingConfig(temperature=temps[r], top_k=ks[r], top_p=ps[r])
            want = sample_next(logits[r:r + 1] + bias[r:r + 1], cfg, row_keys(seeds[r], 1), step)
            assert got[r].item() == want.item(), (r, step)


def test_equal_length_prompts_share_a_fixed_size_prefill(model):
    from tinylm.serve.batcher import Job

    b = Batcher(model, TOK, slots=8, prefill_rows=4)
    shapes = []
    trunk = model.trunk

    def spy(idx, *a, **kw):
        shapes.append(tuple(idx.shape))
        return trunk(idx, *a, **kw)

    events = []
    for p in ("the king", "the rain", "she said", "old well", "Summer"):  # four of 8 characters, one of 6
        b.submit(Job(TOK.encode(p), 3, events.append))
    model.trunk = spy
    try:
        with torch.inference_mode():
            b._admit()
            b.tick()  # everyone joins: one 4-row prefill of length 8, one (padded) of length 6
            b.tick()  # then one step for all 8 slots
    finally:
        del model.trunk
    assert sorted(shapes) == [(4, 6), (4, 8), (8, 1)]


def test_page_card_and_metrics(model_file, monkeypatch):
    import sys
    import types

    from tinylm.model.files import load_model
    from tinylm.serve import page_data

    metrics = model_file.with_name(model_file.name.removesuffix(".model") + ".metrics.jsonl")
    assert page_data.metrics_path(model_file) == metrics
    rows = [{"kind": "train", "step": s, "train_loss": 5 - s / 1000} for s in range(5000)]
    rows += [{"kind": "eval", "step": 100, "val_loss": 4.0}, {"kind": "eval", "step": 200, "val_loss": float("nan")},
             {"kind": "train", "step": "x", "train_loss": 1}, [1, 2]]
    metrics.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    loaded = load_model(model_file)
    got = page_data.page_card(model_file, loaded)
    train = got["metrics"]["train"]
    assert len(train) == page_data.MAX_POINTS and train[0] == [0, 5] and train[-1] == [4999, 5 - 4999 / 1000]
    assert got["metrics"]["eval"] == [[100, 4.0]]  # NaN, wrong types and broken lines are skipped
    assert got["card"]["parameters"] == loaded.model.num_params() and got["card"]["tokenizer"].get("kind", got["card"]["tokenizer"].get("type")) == "char"
    # with tinylm.report.card present, its card is the one shown
    report = types.ModuleType("tinylm.report")
    card = types.ModuleType("tinylm.report.card")
    card.model_card = lambda path: {"name": "from model_card", "path": str(path)}
    monkeypatch.setitem(sys.modules, "tinylm.report", report)
    monkeypatch.setitem(sys.modules, "tinylm.report.card", card)
    assert page_data.page_card(model_file, loaded)["card"] == {"name": "from model_card", "path": str(model_file)}
