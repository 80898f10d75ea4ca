"""Do the heads do worse where decoding asks them than at the average position? A diagnostic for calibration.

    python -m infer.position_bias --prompts data/smollm2/prompts.jsonl --split eval --limit 12

Calibration maps are fitted over every assistant position, but a Medusa decode queries the heads only at the last
accepted position of each step: right after the token where the previous draft failed. This decodes each prompt
(greedy, float32, calibrated dynamic tree), then scores each head's top-1 on the generated text at every position
and at the positions the decode visited, and prints both next to the predicted and realised tokens/step. In float32
the generated text is the base model's own greedy continuation, so "correct" means what verification would accept.
"""

from __future__ import annotations

import argparse

import torch

from .cli import fail
from .decode.single import DecodeConfig, generate
from .model.backbone import stop_ids
from .model.base import DEFAULT_MODEL, load_base_model
from .pipeline import SHIPPED_HEADS, PipelineError, encode, load_calibration, load_heads, read_prompts


def visited_positions(prompt_len: int, accept_lengths: list[int]) -> list[int]:
    """Positions whose hidden state fed the heads: the last prompt token, then each step's last accepted token."""
    out, p = [], prompt_len - 1
    for a in accept_lengths:
        out.append(p)
        p += a
    return out


def score_positions(top1: torch.Tensor, seq: torch.Tensor, start: int, visited: list[int]) -> torch.Tensor:
    """top1 [K, T] (head k's top-1 at position q, a guess for seq[q + k + 2]), seq [T] -> [K, 4]:
    (hits, count) over positions q >= start, then (hits, count) over the visited ones."""
    K, T = top1.shape
    out = torch.zeros(K, 4)
    is_visited = torch.zeros(T, dtype=torch.bool)
    is_visited[torch.tensor(visited, dtype=torch.long)] = True
    for k in range(K):
        q = torch.arange(start, max(start, T - k - 2))
        hit = (top1[k, q] == seq[q + k + 2]).float()
        v = is_visited[q]
        out[k] = torch.stack([hit.sum(), torch.tensor(float(len(q))), hit[v].sum(), v.sum().float()])
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m infer.position_bias", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help="base model (default: embedded SmolLM2-135M-Instruct)"
    )
    p.add_argument("--heads", default=None, help="heads folder or Hub id (default: the shipped heads)")
    p.add_argument("--prompts", default="data/smollm2/prompts.jsonl", help="prompt file (JSONL or lines)")
    p.add_argument("--split", default=None, help="JSONL prompts: only records of this split")
    p.add_argument("--limit", type=int, default=12, help="prompts used (first turns)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="new tokens per prompt")
    p.add_argument("--node-budget", type=int, default=16, help="dynamic tree nodes")
    args = p.parse_args(argv)

    try:
        run(args)
    except (PipelineError, ValueError) as e:
        fail(f"error: {e}")


def run(args) -> None:
    model, tok = load_base_model(args.model, "float32")
    path = args.heads or SHIPPED_HEADS[args.model]
    heads = load_heads(path, model)
    cal = load_calibration(heads, path)
    total, predicted, realised = 0, [], []
    for turns in read_prompts(args.prompts, args.limit, args.split):
        ids = encode(tok, [{"role": "user", "content": turns[0]}], tok.chat_template is not None)
        cfg = DecodeConfig(
            node_budget=args.node_budget, calibration=cal, max_new_tokens=args.max_new_tokens, drafter="heads"
        )
        res = generate(model, ids, heads, cfg, eos=stop_ids(model, tok))
        seq = torch.cat([ids[0], torch.tensor(res.tokens, dtype=torch.long)])  # [T]
        with torch.no_grad():
            hidden = model.get_decoder()(seq[None]).last_hidden_state[0]  # [T, H]
            path = None
            if heads.sequential:  # teacher forcing: head k at t reads the true tokens t+1 .. t+k+1
                K = heads.num_heads
                padded = torch.cat([seq, seq.new_zeros(K + 1)])
                path = model.get_input_embeddings()(padded[1:].unfold(0, K, 1)[: seq.numel()])  # [T, K, H]
            logits = heads(hidden, model.get_output_embeddings(), path)
            top1 = heads.to_full_vocab(logits.argmax(-1))  # [K, T]
        visited = visited_positions(ids.shape[1], res.accept_lengths)
        total = total + score_positions(top1, seq, ids.shape[1] - 1, visited)
        predicted += res.predicted
        realised += res.accept_lengths
    print("head  top-1 at every generated position   top-1 where decoding queried the heads")
    for k, (h_all, n_all, h_vis, n_vis) in enumerate(total.tolist()):
        print(f"{k:>4}  {h_all / max(n_all, 1):>8.3f} ({int(n_all):>6} positions)      "
              f"{h_vis / max(n_vis, 1):>8.3f} ({int(n_vis):>6} positions)")  # fmt: skip
    pred = sum(predicted) / max(1, len(predicted))
    print(f"tokens/step: predicted {pred:.3f}, realised {sum(realised) / max(1, len(realised)):.3f}")


if __name__ == "__main__":
    main()
