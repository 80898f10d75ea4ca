"""What users already have, timed the same way as our decoder: transformers' own ``model.generate`` (greedy) and
its prompt lookup decoding (``prompt_lookup_num_tokens``: drafts copied from n-gram matches in the prompt).

Each returns a :class:`infer.decode.single.DecodeResult` whose ``time_prefill`` ends when the first new token arrives
(a streamer timestamps it), so tokens/s is computed exactly as for our decoder: new tokens over decode time.
"""

from __future__ import annotations

import time

import torch

from .single import DecodeResult

BASELINES = ("hf-generate", "hf-prompt-lookup")
PROMPT_LOOKUP_TOKENS = 10  # transformers' documented example value


class _FirstTokenClock:
    """A generate() streamer that records when the first new token arrives (put #1 is the prompt)."""

    def __init__(self, device):
        self.device, self.calls, self.first = device, 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.first = time.perf_counter()

    def end(self):
        pass


@torch.no_grad()
def hf_generate(
    model, input_ids: torch.Tensor, max_new_tokens: int, eos: set[int], prompt_lookup: int | None = None
) -> DecodeResult:
    """Greedy ``model.generate`` on input_ids [1, L] (prompt lookup decoding when ``prompt_lookup`` is set)."""
    from transformers import GenerationConfig

    device = input_ids.device
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = next(iter(eos), 0)
    gen = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=sorted(eos) or None,
        pad_token_id=pad,
        prompt_lookup_num_tokens=prompt_lookup,
    )
    clock = _FirstTokenClock(device)
    t0 = time.perf_counter()
    out = model.generate(
        input_ids, attention_mask=torch.ones_like(input_ids), generation_config=gen, streamer=clock
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t1 = time.perf_counter()
    tokens = out[0, input_ids.shape[1] :].tolist()
    first = clock.first if clock.first is not None else t1
    return DecodeResult(tokens=tokens, time_total=t1 - t0, time_prefill=first - t0)


def run_baseline(name: str, model, input_ids, max_new_tokens: int, eos: set[int]) -> DecodeResult:
    if name == "hf-generate":
        return hf_generate(model, input_ids, max_new_tokens, eos)
    if name == "hf-prompt-lookup":
        return hf_generate(model, input_ids, max_new_tokens, eos, prompt_lookup=PROMPT_LOOKUP_TOKENS)
    raise ValueError(f"unknown baseline {name!r}; choose one of {BASELINES}")
