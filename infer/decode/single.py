"""Medusa decoding on an unmodified ``AutoModelForCausalLM``: small free functions over tensors.

One step: the heads' top-m tokens -> a tree (static or dynamic) -> one forward of the tree tokens with a 4-D
attention mask and explicit position ids against the KV cache -> acceptance (greedy, typical or lossless tree
speculative sampling) -> keep only the accepted path's KV entries (:func:`compact_kv`) -> the heads run on the
one hidden state they need. The model code knows nothing of speculation (the plumbing is :mod:`infer.model.backbone`).
Batch size is 1 here; :mod:`infer.decode.batch` decodes several prompts together with the same drafting and acceptance.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch

from ..draft.tree import (
    Tree,
    conditional_static_tree,
    conditional_trees,
    dynamic_tree,
)
from ..model.backbone import check_window, stop_ids

ACCEPTANCE = ("greedy", "typical", "sample")
TREES = ("dynamic", "static", "none")
DRAFTERS = (
    "heads",
    "context",
    "heads,context",
)  # who proposes the tree: the heads, the context, or both in one

# A small static tree (paths of per-head ranks) used when --tree static is asked without a choice list.
DEFAULT_CHOICES = [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 0, 0, 0)]


@dataclass(frozen=True)
class Sampling:
    """Per-request settings: how each step's tokens are chosen and when the request ends (what a server request
    carries). The decode loops read only these per row; the drafting settings are the engine's (:class:`Drafting`)."""

    acceptance: str = "greedy"  # "greedy" (lossless), "typical" (Medusa) or "sample" (lossless sampling)
    temperature: float = 0.0  # sampling temperature for "typical" and "sample"
    posterior_threshold: float = 0.09  # typical acceptance: epsilon
    posterior_alpha: float = 0.3  # typical acceptance: alpha (~ sqrt of epsilon)
    max_new_tokens: int = 256  # stop after this many new tokens

    def __post_init__(self):
        if self.acceptance not in ACCEPTANCE:
            raise ValueError(f"acceptance must be one of {ACCEPTANCE}, got {self.acceptance!r}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.acceptance != "greedy" and self.temperature <= 0:
            raise ValueError(f"acceptance {self.acceptance!r} needs temperature > 0 (use greedy for 0)")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")


@dataclass
class Drafting:
    """Engine-wide settings: who drafts and how big the trees are (one per pipeline or server; :class:`.drafters.
    Drafter` reads these alone). ``calibration``, ``latency`` and ``context_stats`` are the measured state the
    pipeline attaches."""

    tree: str = "dynamic"  # "dynamic" (n best paths each step), "static" (medusa_choices) or "none" (plain)
    node_budget: int = 64  # n: candidate nodes in the dynamic tree (the root not counted)
    top_m: int = 8  # m: candidates taken from each head
    depth: int | None = None  # heads used (tree depth); None = all heads
    medusa_choices: list | None = None  # static tree paths; None = DEFAULT_CHOICES
    calibration: object | None = (
        None  # infer.draft.calibration.Calibration: .topk(logits [K, V], m) -> calibrated
    )
    latency: object | None = (
        None  # infer.draft.budget.LatencyProfile: pick the budget (<= node_budget) each step
    )
    beam: int | None = 8  # sequential heads: nodes of a depth that get children (None: node_budget, exact)
    min_mass: float = 0.25  # sequential heads: no deeper head call once the frontier's path probs sum below
    # who drafts: "heads,context" (one tree over both), "heads", or "context" (prompt lookup: a chain, no heads)
    drafter: str = "heads,context"
    context_stats: object | None = (
        None  # infer.draft.context.ContextStats shared across requests (None: per request)
    )

    def __post_init__(self):
        if isinstance(self.drafter, str) and set(self.drafter.split(",")) == {"heads", "context"}:
            self.drafter = "heads,context"  # either order
        if self.drafter not in DRAFTERS:
            raise ValueError(f"drafter must be one of {DRAFTERS}, got {self.drafter!r}")
        if self.tree not in TREES:
            raise ValueError(f"tree must be one of {TREES}, got {self.tree!r}")
        if self.depth is not None and self.depth < 1:
            raise ValueError(f"depth must be >= 1 (heads used), got {self.depth}")
        if self.node_budget < 1 or self.top_m < 1:
            raise ValueError("node_budget and top_m must be >= 1")

    @property
    def context(self) -> bool:
        """Trees come from the context drafter alone (no heads)."""
        return self.tree != "none" and self.drafter == "context"

    @property
    def hybrid(self) -> bool:
        """Trees over the heads' candidates and the context's continuation together."""
        return self.tree != "none" and self.drafter == "heads,context"


SAMPLING_FIELDS = tuple(f.name for f in fields(Sampling))
DRAFTING_FIELDS = tuple(f.name for f in fields(Drafting))


@dataclass
class DecodeConfig(Drafting):
    """The command-line façade: the engine's :class:`Drafting` and one request's :class:`Sampling` in one flat
    object (``cfg.drafting`` and ``cfg.sampling`` split it; both validate their own fields), plus
    ``keep_hidden`` for calibration's decode events."""

    acceptance: str = "greedy"
    temperature: float = 0.0
    posterior_threshold: float = 0.09
    posterior_alpha: float = 0.3
    max_new_tokens: int = 256
    keep_hidden: bool = False  # record each tree step's root index and hidden state (calibration events)

    def __post_init__(self):
        super().__post_init__()
        self.sampling  # noqa: B018  (validates the sampling fields)

    @property
    def sampling(self) -> Sampling:
        return Sampling(**{k: getattr(self, k) for k in SAMPLING_FIELDS})

    @property
    def drafting(self) -> Drafting:
        return Drafting(**{k: getattr(self, k) for k in DRAFTING_FIELDS})

    @classmethod
    def of(cls, drafting: Drafting, sampling: Sampling, **extra) -> DecodeConfig:
        """One flat config from the engine's drafting settings and a request's sampling settings."""
        d = {k: getattr(drafting, k) for k in DRAFTING_FIELDS}
        return cls(**d, **{k: getattr(sampling, k) for k in SAMPLING_FIELDS}, **extra)


@dataclass
class DecodeResult:
    tokens: list[int]  # new tokens
    accept_lengths: list[int] = field(default_factory=list)  # tokens emitted per decode step (bonus counted)
    time_total: float = 0.0  # seconds, prefill included
    time_prefill: float = 0.0
    time_tree: float = 0.0  # building trees (candidates, masks, positions)
    time_heads: float = 0.0  # running the heads
    time_verify: float = 0.0  # tree forward passes
    predicted: list[float] = field(default_factory=list)  # expected tokens/step predicted by the tree scores
    tree_sizes: list[int] = field(default_factory=list)  # nodes verified per step, root included
    sources: dict = field(
        default_factory=dict
    )  # accepted draft tokens by who proposed them (heads/context/both)
    roots: list[int] = field(default_factory=list)  # keep_hidden: index in tokens of each tree step's root
    hiddens: list[torch.Tensor] = field(
        default_factory=list
    )  # keep_hidden: [H] the heads' input at each root

    @property
    def steps(self) -> int:
        return len(self.accept_lengths)

    @property
    def tokens_per_step(self) -> float:
        return sum(self.accept_lengths) / max(1, self.steps)

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / max(1e-9, self.time_total - self.time_prefill)


# ----------------------------------------------------------------------------------------------- acceptance
def typical_ok(probs: torch.Tensor, cfg: DecodeConfig) -> torch.Tensor:
    """[T, V] probabilities -> [T, V] bool: Medusa's typical acceptance, p > min(eps, alpha * exp(-entropy))."""
    entropy = -(probs * probs.clamp_min(1e-10).log()).sum(-1, keepdim=True)
    return probs > torch.minimum(
        torch.full_like(entropy, cfg.posterior_threshold), cfg.posterior_alpha * (-entropy).exp()
    )


MIN_TEMPERATURE = (
    1e-4  # below it logits / T overflows to inf (softmax NaN); the distribution is one-hot anyway
)


def _temperature(cfg) -> float:
    return max(cfg.temperature, MIN_TEMPERATURE)


def sample_from(probs: torch.Tensor, generator=None) -> int:
    return int(torch.multinomial(probs, 1, generator=generator))


def accept_deterministic(
    tree: Tree, mask: torch.Tensor, tokens: torch.Tensor, logits: torch.Tensor, cfg, gen
):
    """Greedy or typical acceptance, vectorised over nodes.

    tokens [T], logits [T, V] -> (accepted path positions [A] ascending, next root token).
    A node is correct when its token is what its parent's logits accept; it is accepted when it and all its
    ancestors are correct; the deepest accepted node wins (first in tree order on ties: the most probable).
    """
    if cfg.acceptance == "greedy":
        pred = logits.argmax(-1)  # [T]
        correct = tokens == pred[tree.parents]
    else:
        probs = torch.softmax(logits / _temperature(cfg), -1)
        ok = typical_ok(probs, cfg)  # [T, V]
        correct = ok[tree.parents, tokens]
    correct[0] = True
    accepted = (mask.to(torch.int32) @ (~correct).to(torch.int32)) == 0  # [T]: no wrong ancestor
    best = int(torch.argmax(tree.depth * accepted))
    path = mask[best].nonzero().squeeze(1)
    if cfg.acceptance == "greedy":
        return path, int(pred[best])
    trunc = probs[best] * ok[best]
    return path, sample_from(trunc / trunc.sum(), gen)


def accept_sample(tree: Tree, tokens: torch.Tensor, logits: torch.Tensor, cfg, gen):
    """Lossless tree speculative sampling (recursive rejection sampling, as SpecInfer/EAGLE).

    The candidates are deterministic (top-m of the heads), so a child token x is accepted with probability
    r(x) under the current residual r (which starts as the target distribution p at the parent); on rejection
    r(x) is zeroed and r renormalised. If no child is accepted, the next token is drawn from r. The output is
    distributed exactly as p at every position. Walks only the accepted path: at most depth x m checks.
    """
    probs = torch.softmax(logits / _temperature(cfg), -1)  # [T, V]
    parents, toks = tree.parents.tolist(), tokens.tolist()
    children: dict[int, list[int]] = {}
    for i in range(1, len(parents)):
        children.setdefault(parents[i], []).append(i)
    cur, path = 0, [0]
    device = gen.device if gen is not None else probs.device  # a generator draws on its own device
    uniforms = torch.rand(len(parents), generator=gen, device=device).tolist()
    while True:
        residual = probs[cur].clone()
        for c in children.get(cur, []):
            x = toks[c]
            if uniforms[c] < float(residual[x]):
                cur = c
                path.append(c)
                break
            residual[x] = 0.0
            residual /= residual.sum()
        else:
            return torch.tensor(path, device=tokens.device), sample_from(residual, gen)


# --------------------------------------------------------------------------------------------- the decoder
def top_candidates(
    heads, logits: torch.Tensor, cfg: DecodeConfig, m: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The heads' logits [K, V or V_head] -> (top-m token ids [K', m], (calibrated) log-probs [K', m]), K' heads
    used (cfg.depth)."""
    if cfg.depth is not None:
        logits = logits[: cfg.depth]
    m = min(m, logits.shape[-1])
    if cfg.calibration is not None:
        top_idx, top_logp = cfg.calibration.topk(logits, m)
    else:
        top_logp, top_idx = torch.topk(torch.log_softmax(logits, -1), m, dim=-1)
    return heads.to_full_vocab(top_idx), top_logp


def head_children(heads, lm_head, embed, d: int, hidden: torch.Tensor, paths: torch.Tensor, cfg, m: int):
    """Sequential head d on F paths [F, d+1] read from hidden [F, H] -> (token ids [F, m], conditional log-probs
    [F, m], calibrated when cfg.calibration is set)."""
    logits = heads.head_logits(d, hidden, lm_head, embed(paths)).float()  # [F, V_head]
    k = min(m, logits.shape[-1])
    if cfg.calibration is not None:
        idx, logp = cfg.calibration.topk(logits, k, head=d)
    else:
        logp, idx = torch.topk(torch.log_softmax(logits, -1), k, dim=-1)
    return heads.to_full_vocab(idx), logp


def tree_room(cfg: DecodeConfig, heads) -> int:
    """Cache positions a tree step may add beyond the accepted tokens: 0 for plain decoding, else at most the
    node budget, and never more than the candidate paths that exist (sum over depths of top_m ** d)."""
    from ..draft.context import MAX_TOKENS

    chain = min(cfg.node_budget, MAX_TOKENS) if cfg.context or cfg.hybrid else 0  # the context's chain
    if cfg.tree == "none" or heads is None or cfg.context:
        return chain + 1 if chain else 0
    depth = heads.num_heads if cfg.depth is None else min(cfg.depth, heads.num_heads)
    if cfg.tree == "static":
        return max(len(cfg.medusa_choices or DEFAULT_CHOICES), chain) + 1
    return max(min(cfg.node_budget, sum(cfg.top_m**d for d in range(1, depth + 1))), chain) + 1


def engine_room(cfg: DecodeConfig, heads, engine) -> int:
    """:func:`tree_room` on ``engine``: a fixed-shape engine cuts trees to its largest step and pads them to its
    buckets (a one-row or a batched engine)."""
    room = tree_room(cfg, heads)
    if engine.buckets is not None and room > 1:
        room = engine.bucket(min(room, engine.buckets[-1]))
    return room


def check_static_fits(drafter, engine) -> None:
    """A static tree is never cut: one bigger than a fixed-shape engine's largest step is refused."""
    if engine.buckets is not None and drafter.static is not None and drafter.static.size > engine.buckets[-1]:
        raise ValueError(
            f"the static tree has {drafter.static.size} nodes but the {engine.name} engine's largest step is "
            f"{engine.buckets[-1]}: use a smaller tree or the eager engine"
        )


def draft_tree(heads, lm_head, embed, hidden, root_t, cfg: DecodeConfig, depth: int, top_m: int, static=None):
    """One step's drafting at hidden [H] -> (tree, top tokens [K, m] | None, top log-probs [K, m] | None, seconds
    spent in the heads): :func:`draft_trees` for one row."""
    [(tree, tokens, logp)], spent = draft_trees(
        heads, lm_head, embed, hidden[None], [root_t], cfg, depth, top_m, static
    )
    return tree, tokens, logp, spent


@torch.no_grad()
def draft_trees(heads, lm_head, embed, hiddens, roots: list, cfg: DecodeConfig, depth: int, top_m: int,
                static=None) -> tuple[list, float]:  # fmt: skip
    """One step's drafting for a batch: hiddens [B, H], roots [B] (ints or 0-d tensors) -> ([(tree, top tokens
    [K, m] | None, top log-probs [K, m] | None)] per row, seconds spent in the heads). Medusa heads: one call for
    every row, then each row's static or dynamic tree. Sequential heads: the heads run inside the depth-by-depth
    builders, one call per depth over every row's frontier (top tokens/log-probs None: the tree carries its tokens
    and path scores)."""
    device = hiddens.device
    root_t = [torch.as_tensor(r, device=device) for r in roots]
    if not heads.sequential:
        t0 = now(device)
        logits = heads(hiddens, lm_head).float()  # [K, B, V or V_head]
        tops = [top_candidates(heads, logits[:, b], cfg, top_m) for b in range(len(root_t))]  # [K, m] each
        spent = now(device) - t0
        trees = [static if static is not None else dynamic_tree(lp, cfg.node_budget) for _, lp in tops]
        return [(t, tok, lp) for t, (tok, lp) in zip(trees, tops)], spent
    timer = [0.0]

    def expand_rows(d: int, requests):  # [(row, paths [F_row, d+1])] -> [(tokens, logp) [F_row, m]]
        t1 = now(device)
        sizes = [p.shape[0] for _, p in requests]
        hs = torch.cat([hiddens[b].expand(p.shape[0], -1) for b, p in requests])  # [F, H]
        paths = torch.cat([p for _, p in requests])  # [F, d+1]
        tok, logp = head_children(heads, lm_head, embed, d, hs, paths, cfg, top_m)
        timer[0] += now(device) - t1
        return list(zip(tok.split(sizes), logp.split(sizes)))

    if static is not None:  # the static tree's parents, depth by depth, row by row
        trees = [
            conditional_static_tree(static, lambda d, p, b=b: expand_rows(d, [(b, p)])[0], r)
            for b, r in enumerate(root_t)
        ]
    else:
        trees = conditional_trees(expand_rows, root_t, depth, cfg.node_budget, cfg.beam, cfg.min_mass)
    return [(t, None, None) for t in trees], timer[0]


def now(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def emit_tokens(
    result: DecodeResult, new: list[int], eos: set[int], cfg: DecodeConfig, on_tokens, step=True
) -> bool:
    """Append new tokens, cut at eos and max_new_tokens, count the step; True when generation is over."""
    room = cfg.max_new_tokens - len(result.tokens)
    new = new[:room]
    done = len(new) == room
    for i, t in enumerate(new):
        if t in eos:
            new, done = new[: i + 1], True
            break
    result.tokens.extend(new)
    if step:
        result.accept_lengths.append(len(new))
    if on_tokens is not None and new:
        on_tokens(new)
    return done


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    heads=None,
    cfg: DecodeConfig | None = None,
    eos: set[int] | None = None,
    on_tokens: Callable[[list[int]], None] | None = None,
    generator: torch.Generator | None = None,
    engine=None,
) -> DecodeResult:
    """Decode from ``input_ids`` [1, L]. With ``cfg.tree == "none"`` (or no heads) it is plain decoding with the
    same machinery, the fair baseline. ``on_tokens`` receives the tokens of each step (for streaming). ``engine``
    (:mod:`infer.engine.single`) runs the model's steps; None: the eager engine."""
    from ..engine.single import EagerEngine

    cfg = cfg or DecodeConfig()
    engine = engine if engine is not None else EagerEngine(model)
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be [1, L] (batch size 1), got {tuple(input_ids.shape)}")
    if input_ids.shape[1] == 0:
        raise ValueError("empty prompt")
    eos = stop_ids(model) if eos is None else eos
    device = input_ids.device
    from ..draft.context import ContextIndex, observe_tree
    from ..draft.drafters import Drafter, RowState

    result = DecodeResult(tokens=[])
    t_start = now(device)
    L = input_ids.shape[1]
    room = engine_room(cfg, heads, engine)
    drafter = Drafter(model, heads, cfg, room)
    check_static_fits(drafter, engine)
    budget = drafter.budget_for(cfg.latency)  # per-step budget from the latency profile
    check_window(model, L + cfg.max_new_tokens + room)
    hidden, logits = engine.prefill(input_ids, L + cfg.max_new_tokens + room)  # [H], [V]
    root = pick_token(logits, cfg, generator)
    result.time_prefill = now(device) - t_start
    # the prefill's token is not a decode step
    done = emit_tokens(result, [root], eos, cfg, on_tokens, step=False)
    index = ContextIndex(input_ids[0].tolist() + [root]) if drafter.use_context else None

    while not done:  # draft -> verify -> accept -> emit
        t0 = now(device)
        drafts, heads_now, heads_s = drafter.propose([RowState(hidden, root, index)], budget)
        t1 = now(device)
        overhead = t1 - t0 if heads_now else None
        if drafts is None:  # a plain step
            hiddens, logits = engine.step(torch.tensor([root], device=device))
            engine.accept()
            hidden = hiddens[0]
            root = pick_token(logits[0], cfg, generator)
            t2 = now(device)
            result.time_verify += t2 - t1
            result.time_heads += heads_s
            result.time_tree += t1 - t0 - heads_s
            if not drafter.plain:
                if budget is not None:
                    budget.observe(1, t2 - t1, overhead)
                result.tree_sizes.append(1)
                result.predicted.append(1.0)
            done = emit_tokens(result, [root], eos, cfg, on_tokens)
            if index is not None:
                index.extend([root])
            continue

        d = drafts[0]
        tree, tokens, buffers = d.tree, d.tokens, d.buffers  # [T], [T], tree_mask [T, T]
        if cfg.keep_hidden:
            result.roots.append(len(result.tokens) - 1)
            result.hiddens.append(hidden.detach().float().cpu())
        result.predicted.append(expected_tokens(tree, buffers.tree_mask, d.logp))
        result.tree_sizes.append(tree.size)
        t1 = now(device)
        hiddens, logits = engine.step(tokens, buffers.position_offsets, buffers.tree_mask)  # [T, H], [T, V]
        if cfg.acceptance == "sample":
            path, root = accept_sample(tree, tokens, logits, cfg, generator)
        else:
            path, root = accept_deterministic(tree, buffers.tree_mask, tokens, logits, cfg, generator)
        engine.accept(path)
        hidden = hiddens[path[-1]]
        t2 = now(device)
        result.time_heads += heads_s
        result.time_tree += t1 - t0 - heads_s  # sequential heads: heads_s is their share of building the tree
        result.time_verify += t2 - t1
        if budget is not None:  # the budget learns from real steps (drafting cost: when the heads drafted)
            budget.observe(tree.size, t2 - t1, overhead)
        new = tokens[path[1:]].tolist() + [root]
        done = emit_tokens(result, new, eos, cfg, on_tokens)
        observe_tree(tree, path, d.match, drafter.stats, result.sources)
        if index is not None:
            index.extend(new)
    result.time_total = now(device) - t_start
    return result


def expected_tokens(tree: Tree, tree_mask: torch.Tensor, logp: torch.Tensor | None) -> float:
    """1 + sum over nodes of P(path accepted), taking the (calibrated) head probabilities at face value. With
    ``logp`` None (path-conditioned trees) the tree's own path scores are those probabilities."""
    if logp is None:
        return float(tree.score[1:].exp().sum()) + 1.0
    node_logp = logp[(tree.depth - 1).clamp(min=0), tree.rank]  # [T]
    node_logp[0] = 0.0
    path_logp = tree_mask.to(node_logp.dtype) @ node_logp  # [T]
    return float(path_logp[1:].exp().sum()) + 1.0


def is_greedy(cfg: DecodeConfig) -> bool:
    return cfg.acceptance == "greedy" or cfg.temperature <= 0


def pick_token(logits: torch.Tensor, cfg: DecodeConfig, generator) -> int:
    """The next token from [V] logits: argmax, or a draw at the temperature (typical-truncated for typical)."""
    if is_greedy(cfg):
        return int(logits.argmax())
    probs = torch.softmax(logits / _temperature(cfg), -1)
    if cfg.acceptance == "typical":
        probs = probs * typical_ok(probs[None], cfg)[0]
        probs = probs / probs.sum()
    return sample_from(probs, generator)
