"""Model plumbing for speculative decoding on an unmodified ``AutoModelForCausalLM``: forward with a KV cache and
explicit position ids, the output projection, the one additive attention mask builder, the one cache truncation,
and the batch-row operations on a cache (select, merge, per-row compaction). Nothing here knows about heads.

Caches are transformers' ``DynamicCache``: per layer ``keys`` / ``values`` [B, kv_heads, S, D]. Keys are stored
after the rotary embedding of the position id they were computed at, so a slot's place in the cache does not
matter: what a query sees is decided by the mask alone. Batched decoding uses that: rows keep a ``valid`` [B, S]
mask of their real slots and may have holes.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The transformer body (returns last hidden states, post final norm) and the output projection."""
    return model.get_decoder(), model.get_output_embeddings()


def forward_hidden(decoder, input_ids, cache, position_ids, attention_mask=None) -> torch.Tensor:
    """input_ids [B, T], position_ids [B, T] -> last hidden states [B, T, H], appending T entries to ``cache``."""
    out = decoder(
        input_ids=input_ids,
        **{_cache_kwarg(decoder): cache},
        position_ids=position_ids,
        attention_mask=attention_mask,
        use_cache=True,
    )
    return out.last_hidden_state


def _cache_kwarg(decoder) -> str:
    """transformers >= 5.3x names the cache argument ``cache``; older versions ``past_key_values``."""
    name = getattr(decoder, "_medusa_cache_kwarg", None)
    if name is None:
        name = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
        decoder._medusa_cache_kwarg = name
    return name


def project(model, lm_head, hidden: torch.Tensor) -> torch.Tensor:
    """Hidden [..., H] -> logits [..., V] in fp32, with the model's final logit soft-capping if it has one."""
    logits = lm_head(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def stop_ids(model, tokenizer=None) -> set[int]:
    """The one stopping rule: a token of the model's generation config ``eos_token_id`` (int or list), the
    tokenizer's eos token, or ChatML's end of turn ``<|im_end|>`` when the tokenizer has that token, ends a
    generation (it is emitted, then nothing more). Used by every decoder, baseline, benchmark and data.distill."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer is not None:
        ids.append(tokenizer.eos_token_id)
        end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
            ids.append(end_of_turn)
    return {i for i in ids if i is not None}


# ------------------------------------------------------------------------------------------------- masks
def additive_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The one mask builder: bool ``visible`` [T, S] or [B, T, S] (query t may see key s) -> additive 4-D mask
    [1 or B, 1, T, S] (0 where visible, the dtype's minimum elsewhere)."""
    if visible.dim() == 2:
        visible = visible[None]
    mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return mask.masked_fill_(~visible, torch.finfo(dtype).min)[:, None]


def tree_attention_mask(tree_mask: torch.Tensor, prefix_len: int, dtype: torch.dtype) -> torch.Tensor:
    """[T, T] bool -> additive 4-D mask [1, 1, T, prefix_len + T]: the prefix is visible to every node."""
    T = tree_mask.shape[0]
    prefix = torch.ones(T, prefix_len, dtype=torch.bool, device=tree_mask.device)
    return additive_mask(torch.cat([prefix, tree_mask], 1), dtype)


# ------------------------------------------------------------------------------------------------- caches
def truncate_cache(cache, length: int) -> None:
    """The one cache truncation: keep the first ``length`` slots of every layer."""
    for layer in cache.layers:
        layer.keys = layer.keys[..., :length, :]
        layer.values = layer.values[..., :length, :]


def compact_kv(cache, prefix_len: int, keep: torch.Tensor) -> None:
    """Keep only the tree positions ``keep`` [A] (ascending, tree-relative) after ``prefix_len`` cached tokens.

    After it, the cache holds prefix + the accepted path, exactly as if those tokens had been decoded one by one.
    """
    A = keep.numel()
    if not bool((keep == torch.arange(A, device=keep.device)).all()):
        idx = keep + prefix_len
        for layer in cache.layers:
            for t in (layer.keys, layer.values):  # [B, heads, L, D]
                t[..., prefix_len : prefix_len + A, :] = t[..., idx, :]
    truncate_cache(cache, prefix_len + A)


def compact_rows(cache, valid: torch.Tensor, start: int, paths: list[torch.Tensor]) -> torch.Tensor:
    """Batched :func:`compact_kv`: row b keeps the block slots ``paths[b]`` [A_b] (ascending, block-relative) of
    the block appended at ``start``, moved to its front; the rest of the block becomes holes. The cache is cut to
    ``start + max A_b``. valid [B, start] -> valid [B, start + max A_b]."""
    B, A = len(paths), max(p.numel() for p in paths)
    dev = valid.device
    src = torch.zeros(B, A, dtype=torch.long, device=dev)
    kept = torch.zeros(B, A, dtype=torch.bool, device=dev)
    for b, p in enumerate(paths):
        src[b, : p.numel()] = p
        kept[b, : p.numel()] = True
    move = bool(
        (src[kept] != torch.arange(A, device=dev).expand(B, -1)[kept]).any()
    )  # plain steps: nothing moves
    idx = src[:, None, :, None]  # [B, 1, A, 1]
    for layer in cache.layers:
        for name in ("keys", "values"):
            t = getattr(layer, name)  # [B, h, S, D]
            if move:  # only the step's block is touched, in place
                block = t[:, :, start:]
                t[:, :, start : start + A] = block.gather(2, idx.expand(-1, t.shape[1], -1, t.shape[3]))
            setattr(layer, name, t[:, :, : start + A])
    return torch.cat([valid[:, :start], kept], 1)


def pack_rows(cache, valid: torch.Tensor) -> torch.Tensor:
    """Squeeze the holes out: each row's valid slots moved to its front, in order; the cache cut to the longest
    row. valid [B, S] -> [B, S']."""
    counts = valid.sum(1)
    S = int(counts.max())
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices[
        :, :S
    ]  # valid slots first, in order
    idx = order[:, None, :, None]
    for layer in cache.layers:
        for name in ("keys", "values"):
            t = getattr(layer, name)
            setattr(layer, name, t.gather(2, idx.expand(-1, t.shape[1], -1, t.shape[3])))
    return torch.arange(S, device=valid.device)[None] < counts[:, None]


def select_rows(cache, rows: torch.Tensor) -> None:
    """Keep the batch rows ``rows`` [B'] of every layer (finished rows leave the batch)."""
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, rows)
        layer.values = layer.values.index_select(0, rows)


def merge_rows(cache, valid: torch.Tensor, other, other_valid: torch.Tensor) -> torch.Tensor:
    """Append the rows of cache ``other`` to ``cache`` (both padded with holes to the same length).
    -> the merged valid mask [B + B', S]."""
    S = max(valid.shape[1], other_valid.shape[1])

    def pad(t, n):  # [B, h, s, D] -> [B, h, n, D]
        return torch.nn.functional.pad(t, (0, 0, 0, n - t.shape[2]))

    for mine, theirs in zip(cache.layers, other.layers):
        mine.keys = torch.cat([pad(mine.keys, S), pad(theirs.keys, S)])
        mine.values = torch.cat([pad(mine.values, S), pad(theirs.values, S)])
    pad_mask = lambda v: torch.nn.functional.pad(v, (0, S - v.shape[1]))  # noqa: E731
    return torch.cat([pad_mask(valid), pad_mask(other_valid)])


def check_window(model, total_len: int) -> None:
    """Sliding-window layers are run with full attention (our 4-D mask): exact only inside the window."""
    cfg = model.config
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True) and total_len > window:
        raise ValueError(
            f"{total_len} tokens exceed the model's sliding window of {window}: tree decoding here treats "
            "attention as full attention, which is exact only within the window; shorten prompt or max_new_tokens"
        )
