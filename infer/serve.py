"""An OpenAI-compatible server that decodes with Medusa heads and batches requests at step boundaries.

    python -m infer.serve                                   # embedded default + shipped heads, port 8000
    python -m infer.serve --model lmsys/vicuna-7b-v1.3 --heads FasterDecoding/medusa-vicuna-7b-v1.3 --port 8001
    python -m infer.serve --tree none                       # the same server without trees (the baseline)

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (``"stream": true`` for server-sent events),
``GET /v1/models``, ``GET /health``. Per request: ``max_tokens``, ``temperature`` (0: greedy, lossless; > 0:
lossless tree speculative sampling of the full distribution), ``stop`` (up to 4 strings), ``seed``. Each response
carries ``usage`` and ``medusa`` (decode steps and tokens per step); a stream sends them in its last chunk.

One decode thread owns a :class:`infer.decode.batch.BatchDecoder`: requests that arrive while others decode join the
batch at the next step boundary (up to ``--max-batch`` rows; the others wait their turn, at most ``--max-queue`` of
them: beyond that a request is refused at once with 429 "overloaded" and ``Retry-After``). A client that disconnects
stops its row. Bad requests get a 4xx with OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``.
"""

import argparse
import asyncio
import json
import math
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field

import torch

from .cli import fail
from .decode.batch import BatchDecoder
from .decode.single import DRAFTERS, DecodeConfig, Sampling, tree_room
from .engine import kernels
from .engine.single import ENGINES, cache_shape
from .model.backbone import check_window
from .pipeline import Pipeline

# requests waiting for a row beyond this are refused with 429 "overloaded", not queued without bound
MAX_QUEUE = 64
MAX_BODY_BYTES = 4 << 20  # a request body larger than this is refused (413) before anything parses it
MAX_STOP = 4  # stop strings per request, as OpenAI's API


class RequestError(ValueError):
    """A request the server refuses: -> HTTP ``status`` with an OpenAI-shaped error body."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


# ------------------------------------------------------------------------------------------------- requests
@dataclass
class Job:
    """One request's row: its prompt, settings, and the events it streams back to the HTTP handler."""

    ids: torch.Tensor  # [1, L]
    sampling: Sampling  # the request's own settings (the drafting settings are the server's)
    stop: list[str]
    events: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    tokenizer: object
    generator: torch.Generator | None = None
    eos: set = field(default_factory=set)
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # decoded so far (sent)
    finish_reason: str | None = None
    cancelled: bool = False
    row: object = None
    error: str | None = None  # why this request failed (finish_reason "error")

    def push(self, new: list[int]) -> None:
        """Decode thread: a step's tokens -> a text delta event; a stop string ends the row there."""
        if self.finish_reason is not None:
            return
        before = len(self.tokens)
        self.tokens.extend(new)
        full = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        found = [full.find(s, max(0, len(self.text) - len(s))) for s in self.stop]
        hit = min((i for i in found if i >= 0), default=-1)
        if hit >= 0:
            end = hit + len(self.stop[found.index(hit)])
            # the tokens a one-token-at-a-time decoder would have generated (usage counts the same either way)
            keep = next(k for k in range(before + 1, len(self.tokens) + 1)
                        if len(self.tokenizer.decode(self.tokens[:k], skip_special_tokens=True)) >= end)  # fmt: skip
            del self.tokens[keep:]
            full, self.finish_reason = full[:hit], "stop"
            self.cancelled = True  # nothing more for this row
        elif full.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return
        else:  # hold back a tail that may be the start of a stop string
            hold = max((k for s in self.stop for k in range(1, len(s)) if full.endswith(s[:k])), default=0)
            full = full[: len(full) - hold]
        if len(full) <= len(self.text):
            return
        delta, self.text = full[len(self.text) :], full
        if delta:
            self._send(("delta", delta))

    def finish(self) -> None:
        """Decode thread: the row left the batch."""
        if self.finish_reason is None:
            r = self.row.result if self.row is not None else None
            full = (
                r is not None
                and len(r.tokens) >= self.sampling.max_new_tokens
                and r.tokens[-1] not in self.eos
            )
            self.finish_reason = "length" if full else "stop"
            rest = self.tokenizer.decode(self.tokens, skip_special_tokens=True)[len(self.text) :]
            if rest:  # held back (a partial character or a stop-string prefix): the generation is over now
                self.text += rest
                self._send(("delta", rest))
        self._send(("done", None))

    def fail(self, message: str) -> None:
        """Decode thread: this request failed; it ends with an error, the other rows go on."""
        if self.finish_reason in (None, "error"):
            self.error, self.finish_reason = message, "error"
        self._send(("done", None))

    def _send(self, event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the HTTP side's loop is closed (the server is stopping): nobody is listening
            self.cancelled = True  # the decode loop drops the row at the next step


def greedy_determinism(model, engine) -> str:
    """Whether a greedy answer depends only on its request on this model and batched engine, in a few words."""
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    if dtype == "float32":
        return "greedy answers depend only on the request (float32)"
    soft = getattr(model.config, "attn_logit_softcapping", None)  # soft-capped attention: not our kernel's
    if getattr(engine, "kernel", None) and cache_shape(model)[2] in kernels.HEAD_DIMS and not soft:
        return (
            f"greedy answers depend only on the request ({dtype}: our batch-invariant kernels in every step)"
        )
    return (
        f"greedy answers may change with load ({dtype} on the {engine.name} engine: near-ties can flip); "
        "--deterministic (float32), or --engine compiled on a CPU with AVX512-BF16, makes them the request's own"
    )


class Engine:
    """The decode thread: admits waiting jobs at step boundaries, steps the batch, hands tokens back."""

    def __init__(
        self,
        pipe: Pipeline,
        trees: bool = True,
        max_batch: int = 8,
        max_queue: int = MAX_QUEUE,
        thread: bool = True,
    ):
        from .draft.budget import BatchLatency

        self.pipe, self.max_batch, self.max_queue = pipe, max_batch, max_queue
        cfg = pipe.config if trees else pipe.decode_config(tree="none")
        engine = pipe.batch_engine()
        latency = (
            BatchLatency(pipe.model, pipe.heads, pipe.device, cfg.latency, engine=engine)
            if cfg.latency is not None
            else None
        )
        self.decoder = BatchDecoder(pipe.model, pipe.heads if trees else None, cfg, pipe.eos, latency, engine)
        self.determinism = greedy_determinism(pipe.model, engine)
        if latency is not None:  # every batch size's profile now (cached on disk): measured on the decode
            # thread while rows decode, a new batch size's first step would stall every row for seconds
            for i in range(
                max(0, max_batch - 1).bit_length() + 1
            ):  # 1, 2, 4 ... (B rows use 2^ceil(log2 B)'s)
                latency.for_batch(1 << i)
        self.trees = trees and (pipe.heads is not None or cfg.context)
        self.waiting: queue.Queue[Job] = queue.Queue()
        self.wake = threading.Event()
        self.stopped = False
        self.error: str | None = None
        self.thread = None  # thread=False: the caller runs run() (serve's main thread, see serve_forever)
        if thread:
            self.thread = threading.Thread(target=self.run, name="medusa-decode", daemon=True)
            self.thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job for the next step boundary; RequestError 429 when ``max_queue`` jobs already wait."""
        if self.waiting.qsize() >= self.max_queue:
            raise RequestError(
                f"the server is overloaded: {self.waiting.qsize()} requests are waiting for a row; retry later",
                status=429,
                code="overloaded",
            )
        job.eos = self.pipe.eos
        self.waiting.put(job)
        self.wake.set()

    def stop(self) -> None:
        self.stopped = True
        self.wake.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=10)

    def _admit(self) -> None:
        """Waiting requests join the batch, prefilled together; when that fails, each alone, so that a request
        that cannot be prefilled fails alone."""
        jobs = []
        while len(self.decoder.rows) + len(jobs) < self.max_batch:
            try:
                job = self.waiting.get_nowait()
            except queue.Empty:
                break
            if job.cancelled:
                job.finish()
            else:
                jobs.append(job)
        if not jobs:
            return
        try:
            rows = self.decoder.add_many([j.ids for j in jobs], [j.sampling for j in jobs], [j.push for j in jobs],
                                         [j.generator for j in jobs], jobs)  # fmt: skip
        except Exception:  # noqa: BLE001 - retried one by one below
            rows = list(self.decoder.added)  # the groups prefilled before the failure keep their rows
        for job in jobs[len(rows) :]:
            try:
                rows.append(self.decoder.add(job.ids, job.sampling, job.push, job.generator, tag=job))
            except Exception as e:  # noqa: BLE001 - reported to its client, the batch is untouched
                job.fail(f"{type(e).__name__}: {e}")
                rows.append(None)
        for job, row in zip(jobs, rows):
            job.row = row
            if row is not None and row.done:
                job.finish()

    def run(self) -> None:
        """The decode loop, in the calling thread (its own, or serve_forever's main thread), until :meth:`stop`."""
        while not self.stopped:
            inflight = []
            try:
                self._admit()
                if not self.decoder.rows:
                    self.wake.wait(0.5)
                    self.wake.clear()
                    continue
                inflight = list(self.decoder.rows)
                for row in inflight:
                    if row.tag.cancelled:
                        self.decoder.cancel(row)
                for row in self.decoder.step():
                    row.tag.finish()
            except Exception as e:  # keep serving: a failed step ends the rows it held, each with a reply
                self.error = f"{type(e).__name__}: {e}"
                for row in inflight:  # rows that had already stopped (a stop string) still finish normally
                    if row.tag.finish_reason is None:
                        row.tag.fail(self.error)
                    else:
                        row.tag.finish()
                d = self.decoder
                self.decoder = BatchDecoder(self.pipe.model, d.heads, d.cfg, self.pipe.eos, d.latency,
                                            d.engine.fresh())  # fmt: skip


# ------------------------------------------------------------------------------------------------ the app
def _field(body: dict, name: str, kinds, default, check=None, what: str = ""):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise RequestError(f"'{name}' must be {what}, got {value!r}", name)
    if not isinstance(value, kinds) or (check is not None and not check(value)):
        raise RequestError(f"'{name}' must be {what}, got {value!r}", name)
    return value


def _utf8(texts: list[str], param: str) -> None:
    """JSON can carry lone surrogates (\\ud800) that no tokenizer can encode."""
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise RequestError(
                f"'{param}' holds text that is not valid Unicode ({e.reason})", param
            ) from None


def parse_request(body, chat: bool, pipe: Pipeline, served: str) -> tuple[torch.Tensor, Sampling, dict]:
    """A request body -> (input ids [1, L], the row's Sampling settings, options); RequestError when it is bad."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != served:
        raise RequestError(f"the model '{model}' does not exist; this server serves '{served}'", "model", 404,
                           "model_not_found")  # fmt: skip
    if chat:
        messages = body.get("messages")
        ok = isinstance(messages, list) and messages and all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
            for m in messages
        )  # fmt: skip
        if not ok:
            raise RequestError("'messages' must be a non-empty list of {'role': system|user|assistant, 'content': "
                               "string}", "messages")  # fmt: skip
        if not messages[-1]["content"].strip():
            raise RequestError("the last message is empty", "messages")
        _utf8([m["content"] for m in messages], "messages")
        ids = pipe.encode(messages)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise RequestError("'prompt' must be a non-empty string", "prompt")
        _utf8([prompt], "prompt")
        ids = pipe.tokenizer(prompt, return_tensors="pt").input_ids.to(pipe.device)
    number = (int, float)
    max_tokens = _field(body, "max_tokens", int, 256, lambda v: v >= 1, "an integer >= 1")
    max_tokens = _field(body, "max_completion_tokens", int, max_tokens, lambda v: v >= 1, "an integer >= 1")
    temperature = _field(
        body, "temperature", number, 0.0, lambda v: 0 <= v <= 2 and math.isfinite(v), "a number in [0, 2]"
    )  # fmt: skip (compared first: a huge integer has no float)
    # checked only: lossless sampling draws from the whole distribution, one answer per request
    _field(
        body,
        "top_p",
        number,
        1.0,
        lambda v: v == 1,
        "1 (lossless sampling draws from the whole distribution)",
    )
    _field(body, "n", int, 1, lambda v: v == 1, "1")
    # refused, not ignored: each changes the distribution a row samples from, which the tree's verification would
    # have to apply per path (or, for log-probabilities, report per token); not supported here
    for name in ("presence_penalty", "frequency_penalty"):
        _field(body, name, number, 0, lambda v: v == 0, "0 (penalties are not supported by this server)")
    for name, off in (("logit_bias", {}), ("logprobs", False), ("top_logprobs", 0)):
        if body.get(name) not in (None, off):
            raise RequestError(f"'{name}' is not supported by this server; leave it out", name)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(
            f"'stop' must be a non-empty string or a list of at most {MAX_STOP} of them", "stop"
        )
    seed = _field(body, "seed", int, None, lambda v: -(2**63) <= v < 2**64, "an integer in [-2^63, 2^64)")
    stream = _field(body, "stream", bool, False, None, "true or false")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object", "stream_options")
    context = getattr(pipe.model.config, "max_position_embeddings", None)
    sampling = Sampling(
        max_new_tokens=max_tokens,
        temperature=float(temperature),
        acceptance="sample" if temperature > 0 else "greedy",
    )
    room = tree_room(pipe.config, pipe.heads)
    if context and ids.shape[1] + max_tokens + room > context:
        raise RequestError(
            f"this model's context is {context} tokens; the prompt has {ids.shape[1]} and max_tokens is "
            f"{max_tokens} (+{room} for the draft tree); lower max_tokens or shorten the prompt",
            "max_tokens",
            code="context_length_exceeded",
        )
    try:  # a sliding-window model: exact only within its window (the decoder would refuse it later)
        check_window(pipe.model, ids.shape[1] + max_tokens + room)
    except ValueError as e:
        raise RequestError(str(e), "max_tokens", code="context_length_exceeded") from None
    return (
        ids,
        sampling,
        {"stop": stop, "seed": seed, "stream": stream, "usage": bool(options.get("include_usage"))},
    )


def build_app(
    pipe: Pipeline,
    served: str | None = None,
    trees: bool = True,
    max_batch: int = 8,
    max_queue: int = MAX_QUEUE,
    decode_thread: bool = True,
):
    """The FastAPI app (its decode thread starts now; ``app.state.engine.stop()`` ends it). ``decode_thread``
    False: no thread; the caller runs ``app.state.engine.run()`` (:func:`serve_forever` does, in the main thread)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    served = served or pipe.name
    engine = Engine(pipe, trees=trees, max_batch=max_batch, max_queue=max_queue, thread=decode_thread)
    app = FastAPI(title="medusa-toolkit server")
    app.state.engine = engine

    def error(e: RequestError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):  # 404 / 405 in OpenAI's shape
        return error(RequestError(str(exc.detail), status=exc.status_code))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return error(RequestError(f"invalid request: {exc.errors()[:1]}"))

    @app.get("/health")
    async def health():
        state = {"status": "ok" if engine.error is None else "degraded", "batch": len(engine.decoder.rows)}
        return state | ({"last_error": engine.error} if engine.error else {})

    @app.get("/v1/models")
    async def models():
        card = {"id": served, "object": "model", "created": 0, "owned_by": "medusa-toolkit"}
        return {"object": "list", "data": [card]}

    async def complete(request: Request, chat: bool):
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:  # tokenising a huge prompt would stall every request, /health included
            return error(RequestError(f"the request body is {len(raw)} bytes, over the limit of {MAX_BODY_BYTES}",
                                      status=413, code="request_too_large"))  # fmt: skip
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as e:  # bad JSON, nesting too deep, integers of 4,300+ digits
            return error(RequestError(f"the request body is not valid JSON ({str(e)[:200]})"))
        try:  # in a worker thread: tokenising a long prompt must not hold up other requests (/health too)
            ids, sampling, opts = await asyncio.to_thread(parse_request, body, chat, pipe, served)
        except RequestError as e:
            return error(e)
        except Exception as e:  # noqa: BLE001 - the chat template or the tokenizer refused the input
            return error(RequestError(f"the prompt cannot be encoded: {str(e)[:300]}"))
        gen = None
        if sampling.acceptance == "sample":
            gen = torch.Generator(device=pipe.device)
            gen.manual_seed(opts["seed"] if opts["seed"] is not None else torch.seed())
        loop = asyncio.get_running_loop()
        job = Job(ids, sampling, opts["stop"], asyncio.Queue(), loop, pipe.tokenizer, gen)
        try:
            engine.submit(job)
        except RequestError as e:  # overloaded: refused at once rather than queued without bound
            return JSONResponse(e.body(), status_code=e.status, headers={"Retry-After": "1"})
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"

        def stats() -> dict:
            r = job.row.result if job.row is not None else None
            steps = r.steps if r is not None else 0
            return {
                "usage": {
                    "prompt_tokens": ids.shape[1],
                    "completion_tokens": len(job.tokens),
                    "total_tokens": ids.shape[1] + len(job.tokens),
                },  # fmt: skip
                "medusa": {
                    "trees": engine.trees,
                    "steps": steps,
                    "tokens_per_step": round(r.tokens_per_step, 3) if steps else None,
                },  # fmt: skip
            }

        def choice(text: str | None, final: bool, streaming: bool) -> dict:
            reason = job.finish_reason if final else None
            if chat:
                body = {"delta" if streaming else "message": ({"role": "assistant", "content": text} if not streaming
                        else ({"content": text} if text is not None else {}))}  # fmt: skip
            else:
                body = {"text": text or "", "logprobs": None}
            return {"index": 0, **body, "finish_reason": reason}

        if not opts["stream"]:
            try:
                checked = time.perf_counter()
                while True:
                    try:
                        kind_, _ = await asyncio.wait_for(job.events.get(), 0.5)
                    except asyncio.TimeoutError:
                        kind_ = None
                    if kind_ == "done":
                        break
                    if time.perf_counter() - checked > 0.5:  # nobody to answer any more: free the row
                        checked = time.perf_counter()
                        if await request.is_disconnected():
                            job.cancelled = True
                            return error(RequestError("client disconnected", status=499))
            except asyncio.CancelledError:
                job.cancelled = True
                raise
            if job.finish_reason == "error":
                return error(RequestError(f"decoding failed: {job.error}", status=500))
            reply = {"id": rid, "object": kind, "created": created, "model": served}
            return reply | {"choices": [choice(job.text, True, False)]} | stats()

        async def events():
            head = {"id": rid, "object": f"{kind}.chunk", "created": created, "model": served}
            try:
                if chat:
                    first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                    yield f"data: {json.dumps(head | {'choices': [first]})}\n\n"
                while True:
                    kind_, delta = await job.events.get()
                    if kind_ == "done":
                        break
                    yield f"data: {json.dumps(head | {'choices': [choice(delta, False, True)]})}\n\n"
                if job.finish_reason == "error":  # OpenAI's shape for an error mid-stream
                    body = RequestError(f"decoding failed: {job.error}", status=500).body()
                    yield f"data: {json.dumps(body)}\n\n"
                    return
                last = (
                    head
                    | {"choices": [choice(None if chat else "", True, True)]}
                    | {"medusa": stats()["medusa"]}
                )
                yield f"data: {json.dumps(last)}\n\n"
                if opts["usage"]:
                    yield f"data: {json.dumps(head | {'choices': [], 'usage': stats()['usage']})}\n\n"
                yield "data: [DONE]\n\n"
            finally:  # the client went away mid-stream (or the stream ended): free its row
                if job.finish_reason is None:
                    job.cancelled = True

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await complete(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await complete(request, chat=False)

    return app


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infer.serve", description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add(
        "--model",
        default=None,
        help="base model: Hub id or folder (default: the embedded SmolLM2-135M-Instruct)",
    )
    add(
        "--heads",
        default=None,
        help="heads folder or Hub id (default: the shipped heads of the default model)",
    )
    add("--served-model-name", default=None, help="the model id clients ask for (default: --model's)")
    add("--tree", choices=("dynamic", "static", "none"), default="dynamic", help="none: serve without trees")
    add("--drafters", "--drafter", dest="drafter", choices=DRAFTERS, default="heads,context",
        help="who proposes each row's tree: the heads, the row's own context (prompt lookup, no heads), or "
        "heads,context (one tree over both)")  # fmt: skip
    add("--node-budget", default="auto", help="dynamic tree nodes per row, or auto (measured latency)")
    add("--max-nodes", type=int, default=32, help="the auto budget's upper bound")
    add("--max-batch", type=int, default=8, help="rows decoded together; more requests wait their turn")
    add(
        "--max-queue",
        type=int,
        default=MAX_QUEUE,
        help="requests that may wait for a row; more get 429 (overloaded)",
    )
    add("--dtype", default="auto", help="float32, bfloat16, float16 or auto (measured)")
    add("--deterministic", action="store_true",
        help="greedy answers depend only on the request (alone or among concurrent ones, streaming or not) whatever "
        "engine and CPU: decodes in float32, ~4x slower than bf16 on this CPU; in bf16 the compiled engine with our "
        "kernels (AVX512-BF16 CPUs) already is (README: batch invariance)")  # fmt: skip
    add("--engine", choices=ENGINES, default="auto",
        help="who runs the batch's steps: compiled fixed-shape steps (built once, cached), eager, or auto (compiled "
        "where a build here measured it faster)")  # fmt: skip
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add("--host", default="127.0.0.1")
    add("--port", type=int, default=8000)
    add("--trust-remote-code", action="store_true", help="allow custom modelling code from the model repo")
    return p


def serve_forever(app, host: str, port: int, sock=None) -> bool:
    """HTTP (on ``sock`` when given: a socket bound by :func:`_listen`) in a thread, the decode loop in the calling
    (main) thread, until SIGTERM / Ctrl-C -> whether the HTTP server had started. Open streams get 3 s
    to end (they held the exit for 19 s), then the decode loop stops. The decode loop runs in the main thread
    because the compiled steps' OpenMP team is ~3x slower started from another thread (a 1-row step measured 31–34 ms
    there vs 11–12 ms in the main thread: with a second team alive, libgomp throttles its spin-waiting)."""
    import signal

    import uvicorn

    engine = app.state.engine
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)
    )

    def http() -> None:
        try:
            server.run(sockets=[sock] if sock is not None else None)  # in a thread: signals stay in main
        finally:
            engine.stop()  # the server is gone (or never started): the decode loop ends too

    def on_signal(signum, frame) -> None:
        server.should_exit = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=http, name="medusa-http", daemon=True)
    thread.start()
    try:
        engine.run()
        thread.join(timeout=10)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return server.started


def _listen(host: str, port: int):
    """The server's socket, bound now and held while the model loads (minutes): a busy port is an error before
    anything loads, and no other process can take the port in the meantime."""
    import socket

    from .pipeline import PipelineError

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(
        socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
    )  # as uvicorn binds: a port in TIME_WAIT is free
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise PipelineError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def main(argv: list[str] | None = None) -> int:
    from .draft.calibration import CalibrationError
    from .draft.heads import HeadsError
    from .model.base import BaseModelError
    from .pipeline import PipelineError, deterministic_dtype, load_pipeline

    args = build_parser().parse_args(argv)
    auto = str(args.node_budget) == "auto"
    try:
        if not auto and not str(args.node_budget).isdigit():
            raise PipelineError(
                f"--node-budget must be a positive integer or 'auto', got {args.node_budget!r}"
            )
        if args.max_batch < 1:
            raise PipelineError("--max-batch must be >= 1")
        if args.max_queue < 0:
            raise PipelineError("--max-queue must be >= 0")
        sock = _listen(args.host, args.port)  # before minutes of loading, and before saying "serving on"
        cfg = DecodeConfig(tree=args.tree, node_budget=args.max_nodes if auto else int(args.node_budget),
                           drafter=args.drafter)  # fmt: skip
        pipe = load_pipeline(
            args.model,
            args.heads,
            dtype=deterministic_dtype(args.dtype, args.deterministic),
            device=args.device,
            config=cfg,
            auto_budget=auto,
            max_nodes=args.max_nodes,
            trust_remote_code=args.trust_remote_code,
            engine=args.engine,
        )
    except (PipelineError, BaseModelError, HeadsError, CalibrationError, ValueError) as e:
        fail(f"error: {e}")
    app = build_app(pipe, args.served_model_name, trees=args.tree != "none", max_batch=args.max_batch,
                    max_queue=args.max_queue, decode_thread=False)  # fmt: skip
    print(f"serving {args.served_model_name or pipe.name} on http://{args.host}:{args.port}/v1 "
          f"(trees: {args.tree}, max batch {args.max_batch}, engine: {pipe.batch_engine_reason}; "
          f"{app.state.engine.determinism})", flush=True)  # fmt: skip
    if not serve_forever(app, args.host, args.port, sock):
        fail(f"error: the HTTP server on {args.host}:{args.port} did not start (its log above says why)")
    print("server stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
