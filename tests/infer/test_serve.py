"""infer.serve against a live server on a local port, driven by the real ``openai`` client: chat and completions,
streaming and not, 8 concurrent clients batched together, greedy answers identical to plain greedy decoding,
OpenAI-shaped errors after which the server keeps serving, and a client that disconnects freeing its row."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import pytest
import torch

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
import httpx  # noqa: E402

from infer.decode.single import DecodeConfig  # noqa: E402
from infer.pipeline import load_pipeline  # noqa: E402
from tests.tiny import tiny_model  # noqa: E402

SERVED = "tiny-medusa"
QUESTIONS = [
    "What is the capital of France?",
    "Say hello.",
    "Count to five.",
    "Name a fox.",
    "Tree attention?",
    "Add two numbers.",
    "Paris or Rome?",
    "Be brief.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(port: int) -> None:
    """Until the server on ``port`` answers /health (at most ~10 s)."""
    for _ in range(200):
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)


@contextlib.contextmanager
def serving(app):
    """Run ``app`` on a free port in a thread -> an openai client of it; stopped (server and decode thread) after."""
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if srv.started:
                break
            time.sleep(0.05)
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        app.state.engine.stop()


@pytest.fixture(scope="module")
def server(folders):
    from infer.serve import build_app

    torch.manual_seed(0)
    cfg = DecodeConfig(node_budget=8, top_m=4)
    pipe = load_pipeline(
        str(folders / "model"),
        str(folders / "heads"),
        dtype="float32",
        config=cfg,
        auto_budget=False,
        verbose=False,
    )
    app = build_app(pipe, SERVED, max_batch=8)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    yield {"pipe": pipe, "url": url, "engine": app.state.engine,
           "client": openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)}  # fmt: skip
    srv.should_exit = True
    thread.join(timeout=10)
    app.state.engine.stop()


def expected(pipe, question: str, max_tokens: int) -> str:
    """Plain greedy decoding (no tree) of the same chat prompt, decoded like the server decodes."""
    ids = pipe.encode([{"role": "user", "content": question}])
    tokens = pipe.generate(ids, pipe.decode_config(tree="none", max_new_tokens=max_tokens)).tokens
    return pipe.tokenizer.decode(tokens, skip_special_tokens=True)


def test_models_and_health(server):
    assert [m.id for m in server["client"].models.list().data] == [SERVED]
    assert httpx.get(server["url"] + "/health").json()["status"] == "ok"


def test_chat_greedy_equals_plain_decoding(server):
    client, pipe = server["client"], server["pipe"]
    reply = client.chat.completions.create(
        model=SERVED, messages=[{"role": "user", "content": QUESTIONS[0]}], max_tokens=24, temperature=0
    )
    assert reply.choices[0].message.content == expected(pipe, QUESTIONS[0], 24)
    assert reply.choices[0].finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.completion_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert reply.model_extra["medusa"]["steps"] >= 1


def test_streaming_chat_and_completions(server):
    client, pipe = server["client"], server["pipe"]
    stream = client.chat.completions.create(
        model=SERVED,
        messages=[{"role": "user", "content": QUESTIONS[1]}],
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected(pipe, QUESTIONS[1], 20)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens > 0  # include_usage: the last chunk
    # /v1/completions: a raw prompt, no chat template; streaming and not agree
    whole = client.completions.create(model=SERVED, prompt="The quick brown", max_tokens=12)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=SERVED, prompt="The quick brown", max_tokens=12, stream=True))  # fmt: skip
    assert whole.choices[0].text == streamed
    ids = pipe.tokenizer("The quick brown", return_tensors="pt").input_ids
    plain = pipe.generate(ids, pipe.decode_config(tree="none", max_new_tokens=12)).tokens
    assert whole.choices[0].text == pipe.tokenizer.decode(plain, skip_special_tokens=True)


def test_eight_concurrent_streaming_clients(server):
    """8 clients at once: batched together in the decode thread; each gets its own plain-greedy answer."""
    client, pipe = server["client"], server["pipe"]
    answers, errors = {}, []

    def ask(i):
        try:
            stream = client.chat.completions.create(
                model=SERVED, messages=[{"role": "user", "content": QUESTIONS[i]}], max_tokens=32, stream=True
            )
            answers[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    seen = []
    for t in threads:
        t.start()
    for _ in range(100):  # the batch grows beyond one row while they decode
        seen.append(len(server["engine"].decoder.rows))
        time.sleep(0.01)
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert max(seen) > 1
    for i in range(8):
        assert answers[i] == expected(pipe, QUESTIONS[i], 32), f"client {i}"


def test_sampling_is_reproducible_by_seed(server):
    client = server["client"]

    def ask(seed):
        reply = client.chat.completions.create(
            model=SERVED,
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=16,
            temperature=1.0,
            seed=seed,
        )
        return reply.choices[0].message.content

    assert ask(7) == ask(7)


def test_stop_strings(server):
    client, pipe = server["client"], server["pipe"]
    full = expected(pipe, QUESTIONS[2], 32)
    if len(full) < 6:
        pytest.skip("the tiny model answered too briefly to cut it")
    stop = full[3:5]
    reply = client.chat.completions.create(
        model=SERVED, messages=[{"role": "user", "content": QUESTIONS[2]}], max_tokens=32, stop=[stop]
    )
    assert reply.choices[0].message.content == full[: full.find(stop)]
    assert reply.choices[0].finish_reason == "stop"
    # usage counts the tokens up to the one that completed the stop string, not the rest of its tree step: the
    # same count a one-token-at-a-time decoder gives
    ids = pipe.encode([{"role": "user", "content": QUESTIONS[2]}])
    tokens = pipe.generate(ids, pipe.decode_config(tree="none", max_new_tokens=32)).tokens
    text = lambda k: pipe.tokenizer.decode(tokens[:k], skip_special_tokens=True)  # noqa: E731
    assert reply.usage.completion_tokens == next(k for k in range(1, 33) if stop in text(k))


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server):
    client, url = server["client"], server["url"]
    msg = [{"role": "user", "content": "Hi"}]
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-17", messages=msg)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=SERVED, messages=msg, max_tokens=10_000)
    assert e.value.body["code"] == "context_length_exceeded" and e.value.body["param"] == "max_tokens"
    for bad in ({"temperature": -1}, {"n": 2}, {"max_tokens": 0},
                {"stop": ["a", "b", "c", "d", "e"]}, {"top_p": 0.5},
                # refused, not silently ignored: each would change the answer (or its report)
                {"presence_penalty": 0.5}, {"frequency_penalty": -1}, {"logit_bias": {"5": 100}},
                {"logprobs": True}, {"top_logprobs": 2}):  # fmt: skip
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=SERVED, messages=msg, **bad)
        assert e.value.body["type"] == "invalid_request_error" and e.value.body["param"] in bad
    for fine in ({"presence_penalty": 0}, {"logit_bias": {}}, {"logprobs": False}):  # OpenAI's defaults
        assert client.chat.completions.create(model=SERVED, messages=msg, max_tokens=2, **fine).choices
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=SERVED, prompt="Hi", logprobs=2)
    assert e.value.body["param"] == "logprobs"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=SERVED, messages=[{"role": "robot", "content": "x"}])
    raw = httpx.post(
        url + "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert raw.status_code == 400 and "not valid JSON" in raw.json()["error"]["message"]
    nan = (
        b'{"model": "%s", "messages": [{"role": "user", "content": "Hi"}], "temperature": NaN}'
        % SERVED.encode()
    )
    raw = httpx.post(url + "/v1/chat/completions", content=nan, headers={"content-type": "application/json"})
    assert raw.status_code == 400 and raw.json()["error"]["param"] == "temperature"
    assert httpx.get(url + "/v1/nothing").json()["error"]["type"] == "invalid_request_error"
    head = b'{"model": "%s", "messages": [{"role": "user", "content": "Hi"}]' % SERVED.encode()
    for tail, param in ((b', "seed": 18446744073709551616}', "seed"),  # 2^64: torch's manual_seed refused it
                        (b', "temperature": 1' + b"0" * 400 + b"}", "temperature"),  # no float for it
                        (b', "seed": 1' + b"0" * 5000 + b"}", None),  # over Python's int-parsing limit
                        (b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None),  # nesting too deep
                        (b', "messages": [{"role": "user", "content": "\\ud800 lone"}]}', "messages")):  # fmt: skip
        raw = httpx.post(url + "/v1/chat/completions", content=head + tail,
                         headers={"content-type": "application/json"})  # fmt: skip
        assert raw.status_code == 400, (tail[:40], raw.text[:200])
        assert (
            raw.json()["error"]["type"] == "invalid_request_error" and raw.json()["error"]["param"] == param
        )
    big = httpx.post(url + "/v1/completions", json={"model": SERVED, "prompt": "x" * (5 << 20)})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    reply = client.chat.completions.create(model=SERVED, messages=msg, max_tokens=4)  # still serving
    assert reply.choices[0].message.content is not None


@pytest.mark.parametrize("stream", [True, False])
def test_a_disconnected_client_frees_its_row(server, monkeypatch, stream):
    """A client that hangs up mid-answer (streaming: after one chunk; not streaming: a read timeout) stops its row:
    it leaves the batch cancelled, long before its max_tokens (each step slowed by 50 ms so the answer takes seconds)."""
    engine, url = server["engine"], server["url"]
    left, step = [], engine.decoder.step

    def slow_step():
        time.sleep(0.05)
        gone = step()
        left.extend(gone)
        return gone

    monkeypatch.setattr(engine.decoder, "step", slow_step)
    body = {"model": SERVED, "messages": [{"role": "user", "content": "Count to five."}], "max_tokens": 120,
            "stream": stream}  # fmt: skip
    if stream:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith("data:") and "content" in line:
                    break  # one chunk read, then hang up
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/chat/completions", json=body, timeout=0.5)
    for _ in range(100):
        if left:
            break
        time.sleep(0.05)
    assert left and left[0].cancelled and len(left[0].result.tokens) < 100


def test_a_failing_request_ends_alone_and_every_other_row_is_answered(server, monkeypatch):
    """A request whose prefill raises gets an OpenAI-shaped 500 while a streaming request decodes beside it (its
    text equal to its solo answer); a tiny temperature (1e-40: logits / T overflowed to NaN) is served; a step
    that raises ends every row it held with a reply, a row already stopped by a stop string included."""
    client, engine = server["client"], server["engine"]
    msg = [{"role": "user", "content": "Count to five."}]
    solo = (
        client.chat.completions.create(model=SERVED, messages=msg, max_tokens=24).choices[0].message.content
    )
    batch_engine = engine.decoder.engine
    prefill = batch_engine.prefill
    bad_msg = [{"role": "user", "content": "Tree attention?"}]
    bad_len = server["pipe"].encode(bad_msg).shape[1]

    def prefill_or_fail(prompts, *args, **kwargs):  # prompts prefilled together fail together, then alone
        if any(ids.shape[1] == bad_len for ids in prompts):
            raise RuntimeError("out of memory (injected)")
        return prefill(prompts, *args, **kwargs)

    monkeypatch.setattr(batch_engine, "prefill", prefill_or_fail)
    texts = []

    def good():
        chunks = client.chat.completions.create(model=SERVED, messages=msg, max_tokens=24, stream=True)
        texts.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))

    thread = threading.Thread(target=good)
    thread.start()
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model=SERVED, messages=bad_msg, max_tokens=24)
    assert "out of memory (injected)" in e.value.body["message"]
    thread.join(timeout=60)
    assert texts == [solo]
    monkeypatch.setattr(batch_engine, "prefill", prefill)
    tiny = client.chat.completions.create(model=SERVED, messages=msg, max_tokens=8, temperature=1e-40, seed=1)
    assert tiny.choices[0].finish_reason in ("length", "stop")

    # the step right after a row stopped on a stop string raises (in the model's forward, after the stopped row
    # left the batch): the stopped row still gets its answer, the other its error
    import infer.engine.batch

    forward, cancel, state = (
        infer.engine.batch.forward_hidden,
        engine.decoder.cancel,
        {"stopped": False, "raised": 0},
    )

    def cancel_and_note(row):
        state["stopped"] |= row.tag.finish_reason == "stop"
        cancel(row)

    def forward_or_fail(*args, **kwargs):
        if state["stopped"] and not state["raised"]:
            state["raised"] += 1
            raise RuntimeError("step failed (injected)")
        time.sleep(0.02)
        return forward(*args, **kwargs)

    monkeypatch.setattr(engine.decoder, "cancel", cancel_and_note)
    monkeypatch.setattr(infer.engine.batch, "forward_hidden", forward_or_fail)
    replies = {}

    def ask(name, **kw):
        try:
            r = client.chat.completions.create(model=SERVED, messages=msg, max_tokens=60, **kw)
            replies[name] = (r.choices[0].finish_reason, r.choices[0].message.content)
        except openai.InternalServerError as err:
            replies[name] = err.body["message"]

    threads = [threading.Thread(target=ask, args=("long",)), threading.Thread(target=ask, args=("stop",),
               kwargs={"stop": [solo[4:8]]})]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), f"a client hangs: {replies}"
    assert state["raised"] == 1, "the injected failure did not fire"
    assert (
        replies["stop"] == ("stop", solo[: solo.find(solo[4:8])])
        and "step failed (injected)" in replies["long"]
    )


def test_a_stop_string_inside_a_tree_step_counts_only_the_tokens_up_to_it(server):
    """A tree step emits several tokens at once; when a stop string completes at its second token, the job keeps
    (and usage counts) two tokens, as a one-token-at-a-time decoder would: tree and plain serving agree."""
    import asyncio

    from infer.serve import Job

    tok = server["pipe"].tokenizer
    tokens = tok("The quick brown fox jumps over the lazy dog.", add_special_tokens=False).input_ids
    assert len(tokens) >= 5
    stop = tok.decode(tokens[:2])[-2:]
    loop = asyncio.new_event_loop()
    try:
        job = Job(torch.tensor([[1]]), None, [stop], asyncio.Queue(), loop, tok)
        job.push(tokens[:5])  # one step, five tokens
        assert job.finish_reason == "stop" and len(job.tokens) == 2
    finally:
        loop.close()


def test_a_busy_port_is_an_error_before_anything_loads(capsys):
    from infer.serve import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit) as e:
            main(["--port", str(port), "--model", "/nonexistent/model"])  # the port is checked first
    assert f"cannot listen on 127.0.0.1:{port}" in str(e.value)
    assert "serving on" not in capsys.readouterr().out


def test_the_port_is_held_while_the_model_loads(monkeypatch):
    """The port is bound before loading and kept: nothing can take it during the minutes a load may take."""
    import infer.pipeline
    from infer.serve import main

    port, taken = free_port(), []

    def load(*a, **k):  # while "loading": the port must already be ours
        with socket.socket() as other:
            try:
                other.bind(("127.0.0.1", port))
            except OSError:
                taken.append(port)
        raise infer.pipeline.PipelineError("stop here")

    monkeypatch.setattr(infer.pipeline, "load_pipeline", load)
    with pytest.raises(SystemExit):
        main(["--port", str(port)])
    assert taken == [port]


def test_a_server_with_the_context_drafter_answers_like_plain_decoding(folders):
    """--drafter context: no heads; each row drafts from its own context; greedy answers equal plain decoding."""
    from infer.serve import build_app

    mine = DecodeConfig(drafter="context")
    pipe = load_pipeline(str(folders / "model"), None, dtype="float32", config=mine, auto_budget=False,
                         verbose=False)  # fmt: skip
    assert pipe.heads is None
    assert (
        mine.context_stats is None and pipe.config.context_stats is not None
    )  # its own copy, not the caller's
    app = build_app(pipe, SERVED, max_batch=4)
    with serving(app) as client:
        question = "Repeat: the quick brown fox, the quick brown fox, the quick brown fox"
        reply = client.chat.completions.create(
            model=SERVED, messages=[{"role": "user", "content": question}], max_tokens=24
        )
        assert reply.choices[0].message.content == expected(pipe, question, 24)
        assert reply.model_extra["medusa"]["trees"] is True


def test_an_overloaded_server_answers_429_at_once_and_keeps_serving(server):
    """The wait queue is bounded: past --max-queue waiting requests, a request gets 429 "overloaded" (OpenAI's
    RateLimitError) at once instead of waiting without bound; the server answers again when there is room."""
    engine, client = server["engine"], server["client"]
    engine.max_queue = 0  # every request finds the queue full
    try:
        t0 = time.perf_counter()
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(
                model=SERVED, messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
        assert time.perf_counter() - t0 < 5 and e.value.status_code == 429
        assert e.value.body["code"] == "overloaded" and e.value.response.headers["retry-after"] == "1"
    finally:
        engine.max_queue = 64
    out = client.chat.completions.create(
        model=SERVED, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert out.usage.completion_tokens > 0


def test_a_fault_run_hurts_no_good_request(server):
    """All at once: 6 good streaming greedy requests, bad requests of every kind (bad JSON, unknown model, a prompt
    past the context, a negative max_tokens, a non-finite temperature, a tiny temperature), 2 clients that hang up
    mid-stream, a stop string and seeded sampling. No request hangs, every bad one gets a 4xx at once, and every good
    greedy answer equals its solo answer; the server is healthy after."""
    client, pipe, url = server["client"], server["pipe"], server["url"]
    good, errors, statuses = {}, [], {}
    huge = "word " * 5000

    def ask(i):
        try:
            stream = client.chat.completions.create(
                model=SERVED, messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], max_tokens=24,
                stream=True,
            )  # fmt: skip
            good[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        except Exception as e:  # pragma: no cover - reported below
            errors.append((i, e))

    def bad(name, body):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = httpx.post(url + "/v1/chat/completions", content=raw, timeout=60,
                       headers={"content-type": "application/json"})  # fmt: skip
        statuses[name] = (r.status_code, r.json().get("error", {}).get("message", "") if r.content else "")

    msg = [{"role": "user", "content": "hi"}]
    bads = {
        "json": b"{not json",
        "model": {"model": "nope", "messages": msg},
        "context": {"model": SERVED, "messages": [{"role": "user", "content": huge}], "max_tokens": 8},
        "max_tokens": {"model": SERVED, "messages": msg, "max_tokens": -3},
        "temperature": {"model": SERVED, "messages": msg, "temperature": "nan"},
    }

    def hang_up():
        body = {"model": SERVED, "messages": [{"role": "user", "content": "Count to ten."}], "max_tokens": 60,
                "stream": True}  # fmt: skip
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith("data:") and "content" in line:
                    break

    extra = {}

    def others():
        try:
            extra["stop"] = client.chat.completions.create(
                model=SERVED, messages=msg, max_tokens=16, stop=["e"]
            )
            extra["tiny_t"] = client.chat.completions.create(
                model=SERVED, messages=msg, max_tokens=8, temperature=1e-40
            )
            extra["sample"] = client.chat.completions.create(
                model=SERVED, messages=msg, max_tokens=8, temperature=0.8, seed=3
            )
        except Exception as e:  # pragma: no cover - reported below
            errors.append(("others", e))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    threads += [threading.Thread(target=bad, args=item) for item in bads.items()]
    threads += [threading.Thread(target=hang_up) for _ in range(2)] + [threading.Thread(target=others)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not any(t.is_alive() for t in threads), "a request hung"
    assert not errors, errors
    assert {k: s for k, (s, _) in statuses.items()} == {
        "json": 400, "model": 404, "context": 400, "max_tokens": 400, "temperature": 400,
    }, statuses  # fmt: skip
    for i in range(6):
        assert good[i] == expected(pipe, QUESTIONS[i % len(QUESTIONS)], 24), f"good request {i}"
    assert "e" not in extra["stop"].choices[0].message.content
    assert extra["tiny_t"].choices[0].message.content == expected(pipe, "hi", 8)
    assert extra["sample"].usage.completion_tokens > 0
    assert httpx.get(url + "/health", timeout=5).status_code == 200


@pytest.mark.slow
def test_a_server_on_the_compiled_engine_answers_like_plain_decoding(folders):
    """The batch on the compiled engine (torch.compile in process here): 3 concurrent greedy requests (rows padded
    to the 4-row step, rows leaving as they stop) each get plain greedy decoding's answer."""
    from infer.engine.single import CompiledEngine
    from infer.serve import build_app

    pipe = load_pipeline(str(folders / "model"), str(folders / "heads"), dtype="float32",
                         config=DecodeConfig(node_budget=7, top_m=4), auto_budget=False, verbose=False)  # fmt: skip
    pipe.engine = CompiledEngine(pipe.model, buckets=(1, 8), backend="inductor")
    app = build_app(pipe, SERVED, max_batch=4)
    assert app.state.engine.decoder.engine.name == "compiled"
    with serving(app) as client:
        questions = ["Name three colors.", "Count to five.", "Say hello twice."]
        replies = {}

        def ask(q, n):
            r = client.chat.completions.create(
                model=SERVED, messages=[{"role": "user", "content": q}], max_tokens=n
            )
            replies[q] = r.choices[0].message.content

        threads = [threading.Thread(target=ask, args=(q, 10 + 6 * i)) for i, q in enumerate(questions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert replies == {q: expected(pipe, q, 10 + 6 * i) for i, q in enumerate(questions)}


def test_serve_forever_decodes_in_the_main_thread_and_stops_on_sigterm(folders):
    """What `python -m infer.serve` runs: HTTP in a thread, the decode loop in the calling (main) thread; a request
    is answered like plain decoding, and SIGTERM ends both (the previous signal handlers come back)."""
    import os
    import signal

    from infer.serve import _listen, build_app, serve_forever

    pipe = load_pipeline(str(folders / "model"), str(folders / "heads"), dtype="float32",
                         config=DecodeConfig(node_budget=7, top_m=4), auto_budget=False, verbose=False)  # fmt: skip
    app = build_app(pipe, SERVED, max_batch=2, decode_thread=False)
    assert app.state.engine.thread is None
    port, out, decoders = free_port(), {}, []
    original = app.state.engine.run

    def noted_run():
        decoders.append(threading.current_thread())
        original()

    app.state.engine.run = noted_run

    def client_then_sigterm():
        try:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=3)
            _wait_until_up(port)
            r = client.chat.completions.create(model=SERVED, messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=12)  # fmt: skip
            out["reply"] = r.choices[0].message.content
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    helper = threading.Thread(target=client_then_sigterm, daemon=True)
    helper.start()
    assert serve_forever(app, "127.0.0.1", port, _listen("127.0.0.1", port))  # the socket main binds first
    helper.join(timeout=30)
    assert out["reply"] == expected(pipe, "Hi", 12)
    assert decoders == [threading.main_thread()] and app.state.engine.stopped
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_refusing_chat_template_and_a_window_overflow_are_400s(server, monkeypatch):
    """A chat template that raises for the messages, and a prompt + max_tokens past a sliding window (the decoder
    would refuse it only after admission): both are the client's 400, and the server goes on serving."""
    client, pipe = server["client"], server["pipe"]
    refusing = "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}" \
               "{% endif %}{{ m['content'] }}{% endfor %}"  # fmt: skip
    monkeypatch.setattr(pipe, "template", refusing)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=SERVED, messages=[{"role": "system", "content": "x"}, {"role": "user", "content": "Hi"}]
        )
    assert "no system role" in e.value.body["message"]
    monkeypatch.undo()
    monkeypatch.setattr(pipe.model.config, "sliding_window", 24, raising=False)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=SERVED, messages=[{"role": "user", "content": "Hi"}], max_tokens=40
        )
    assert e.value.body["code"] == "context_length_exceeded" and "sliding window" in e.value.body["message"]
    monkeypatch.undo()
    assert client.chat.completions.create(
        model=SERVED, messages=[{"role": "user", "content": "Hi"}], max_tokens=40
    ).choices


def test_a_slow_prompt_to_encode_does_not_hold_up_health(server, monkeypatch):
    """Tokenising runs off the event loop: while one request's prompt takes 2 s to encode, /health answers at once."""
    pipe, url = server["pipe"], server["url"]
    encode = pipe.encode

    def slow_encode(*a, **k):
        time.sleep(2.0)
        return encode(*a, **k)

    monkeypatch.setattr(pipe, "encode", slow_encode)
    body = {"model": SERVED, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    slow = threading.Thread(target=httpx.post, args=(url + "/v1/chat/completions",), kwargs={"json": body,
                                                                                          "timeout": 30})  # fmt: skip
    slow.start()
    time.sleep(0.3)  # the slow request is encoding now
    t0 = time.perf_counter()
    assert httpx.get(url + "/health", timeout=10).status_code == 200
    waited = time.perf_counter() - t0
    slow.join()
    assert waited < 1.0, f"/health waited {waited:.1f} s behind a prompt being encoded"


def test_every_batch_size_is_measured_before_serving(folders, monkeypatch):
    """The batch latency profiles (1, 2, 4, 8 rows for --max-batch 8) are measured when the server starts, not on the
    decode thread the first time a batch of a new size steps (that stalled every row for seconds)."""
    from infer.draft import budget
    from infer.serve import build_app

    monkeypatch.setenv("MEDUSA_CACHE", str(folders / "cache-profiles"))
    pipe = load_pipeline(
        str(folders / "model"), str(folders / "heads"), dtype="float32", auto_budget=True, verbose=False,
        config=DecodeConfig(top_m=4),
    )  # fmt: skip
    measured = []
    real = budget.load_or_measure
    monkeypatch.setattr(
        budget, "load_or_measure", lambda *a, **k: measured.append(k["batch"]) or real(*a, **k)
    )
    app = build_app(pipe, SERVED, max_batch=8, decode_thread=False)
    assert sorted(measured) == [2, 4, 8] and set(app.state.engine.decoder.latency.profiles) >= {1, 2, 4, 8}


def test_the_server_says_whether_greedy_answers_are_the_requests_own():
    """The start-up line says whether a greedy answer depends only on its request: float32 always; bf16 where our
    batch-invariant kernels run every step (head_dim 64 here); else it names the two ways to get there."""
    from types import SimpleNamespace

    from infer.serve import greedy_determinism

    model = tiny_model("llama", hidden_size=256)  # 4 heads: head_dim 64
    assert "depend only on the request (float32)" in greedy_determinism(model, SimpleNamespace(name="eager"))
    model = model.to(torch.bfloat16)
    eager = greedy_determinism(model, SimpleNamespace(name="eager"))
    assert "may change with load" in eager and "--deterministic" in eager and "--engine compiled" in eager
    ours = SimpleNamespace(name="compiled", kernel="bf16-v5")
    assert "depend only on the request (bfloat16" in greedy_determinism(model, ours)
    model.config.attn_logit_softcapping = 50.0  # soft-capped attention: not our kernel's
    assert "may change" in greedy_determinism(model, ours)


def test_sigterm_during_a_stream_stops_the_server_within_seconds(folders):
    """SIGTERM while a client is mid-stream (each step slowed so the answer would take ~20 s): the server gives the
    stream its 3 s, then stops (it used to wait for the stream to end: 19 s)."""
    import os
    import signal

    from infer.serve import _listen, build_app, serve_forever

    pipe = load_pipeline(str(folders / "model"), str(folders / "heads"), dtype="float32",
                         config=DecodeConfig(node_budget=7, top_m=4), auto_budget=False, verbose=False)  # fmt: skip
    app = build_app(pipe, SERVED, max_batch=2, decode_thread=False)
    step = app.state.engine.decoder.step

    def slow_step():
        time.sleep(0.15)
        return step()

    app.state.engine.decoder.step = slow_step
    port, chunks, sent = free_port(), [], {}

    def streaming_client_then_sigterm():
        try:
            _wait_until_up(port)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
            stream = client.chat.completions.create(model=SERVED, messages=[{"role": "user", "content": "Hi"}],
                                                    max_tokens=120, stream=True)  # fmt: skip
            for chunk in stream:
                chunks.append(chunk)
                if len(chunks) == 3:
                    sent["at"] = time.perf_counter()
                    os.kill(os.getpid(), signal.SIGTERM)
        except Exception:  # noqa: BLE001 - the server going away mid-stream is expected
            pass

    helper = threading.Thread(target=streaming_client_then_sigterm, daemon=True)
    helper.start()
    assert serve_forever(app, "127.0.0.1", port, _listen("127.0.0.1", port))
    stopped = time.perf_counter() - sent["at"]
    helper.join(timeout=10)
    assert len(chunks) < 100, "the stream ran to its end: SIGTERM did not stop it"
    assert stopped < 8.0, f"the server took {stopped:.1f} s to stop after SIGTERM during a stream"
    assert app.state.engine.stopped
