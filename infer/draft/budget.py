"""Hardware-aware node budget: verify latency per tree size, and the budget that maximises tokens/s.

A tree of n nodes is only worth verifying if the extra accepted tokens pay for the longer forward pass. Each step,
:meth:`LatencyProfile.best_budget` takes the dynamic tree's path probabilities (sorted, calibrated when a
calibration exists) and picks

    n* = argmax_n  E[tokens/step](n) / (latency(n + 1) + overhead),   E(n) = 1 + sum of the n best path probs.

The latency is a prior measured once per (model, dtype, device, threads, CPU capability) and cached as JSON under
``$MEDUSA_CACHE/latency`` (heads do not change it; their cost is timed at load). A prior cannot be trusted
blindly (a machine that was busy while it was measured gives latencies off by 5-20x), so:

- it is measured with interleaved repetitions (median), and a profile in which a bigger tree is faster than a
  smaller one beyond noise (``MONOTONE_TOL``) is measured again; one that stays so is used monotone-smoothed
  and not cached; a cached one that fails the check is re-measured;
- while decoding, :meth:`LatencyProfile.observe` records each step's time as a ratio to the prior, pooled per size
  class (1, 2-3, 4-7, ...: the median of the last 15), and the prior is corrected by its class's ratio
  (interpolated between observed classes); a few probe steps at anchor sizes (plain step included) keep every class
  observed, so if trees turn out slower than plain steps the budget falls to plain decoding.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field

import torch

from ..cache import cache_root
from ..model.hardware import profile_key  # noqa: F401 (re-exported)
from ..model.timing import MONOTONE_TOL, non_monotone, time_steps  # noqa: F401 (non_monotone: re-exported)
from .tree import tree_buffers

DEFAULT_SIZES = list(range(1, 17)) + list(range(20, 65, 4))  # tree sizes T (root included) measured
PLAIN_MARGIN = 1.05  # plain steps win ties against trees predicted less than 5 % faster
WINDOW = 15  # observed/prior ratios kept per size class
ANCHORS = (1, 2, 4, 8, 16, 32)  # tree sizes probed while decoding, fewest observations first
RECHECK = 16  # while plain steps win, draft again every this many steps to see whether trees pay now
RECHECK_MAX = 128  # ... doubling after each re-check that still says plain (reset when a tree pays again)
UNPAID_RECHECK = (
    64  # while trees cannot pay at all (batched): draft and probe a tree every this many x B steps
)
PROBE_STEPS = (
    2,
    4,
    6,
    8,
    12,
    16,
    24,
    32,
)  # steps (counted over the profile's life) that probe; then every 64th


@dataclass
class LatencyProfile:
    sizes: torch.Tensor  # [S] long: tree sizes T = n + 1, ascending, starting at 1
    seconds: torch.Tensor  # [S] float: prior verify step latency (forward + projection) at each size
    heads_seconds: float  # prior of the per-step overhead: heads + tree building (constant in n)
    key: dict  # what was measured: model, dtype, device, threads, torch version, CPU capability
    observed: list = field(default_factory=list, repr=False)  # per size class: recent observed/prior ratios
    overhead: list = field(default_factory=list, repr=False)  # recent observed heads + tree times
    # recent per-step bookkeeping (masks, positions, cache moves) that every step pays, tree or not
    fixed: list = field(default_factory=list, repr=False)
    steps: int = 0  # best_budget calls so far (the probe schedule)
    probe: bool = True  # probe anchor sizes now and then (off: a pure argmax, for tests)
    skipping: bool = False  # the last draft said plain steps win: decode without drafting for a while
    skipped: int = 0  # plain steps taken since
    recheck: int = (
        RECHECK  # the current re-check interval (RECHECK, doubled per failed re-check, to RECHECK_MAX)
    )
    unpaid: int = 0  # batched steps not drafted because trees could not pay (may_draft)
    force_probe: bool = False  # the next best_budget probes a tree size (a may_draft re-check)
    observations: int = field(
        default=0, repr=False
    )  # observe() calls: the costs below are cached between two
    _costs_memo: tuple | None = field(default=None, repr=False)

    def estimate(self) -> torch.Tensor:
        """[S] current latency per size: the prior times the observed/prior ratio of its size class (sizes
        2^b .. 2^(b+1)-1 pool their observations, so one lucky or unlucky step does not single out a size),
        interpolated between observed classes and held flat beyond them; the prior alone before any observation."""
        self._ensure()
        seen = [b for b, obs in enumerate(self.observed) if obs]
        if not seen:
            return self.seconds
        ratio = {b: math.log(statistics.median(self.observed[b])) for b in seen}
        out = []
        for i, size in enumerate(self.sizes.tolist()):
            b = _size_class(size)
            lo = max((j for j in seen if j <= b), default=None)
            hi = min((j for j in seen if j >= b), default=None)
            if lo is None or hi is None or lo == hi:
                r = ratio[hi if lo is None else lo]
            else:
                r = ratio[lo] + (b - lo) / (hi - lo) * (ratio[hi] - ratio[lo])
            out.append(float(self.seconds[i]) * math.exp(r))
        return torch.tensor(out, dtype=torch.float64)

    def best_budget(self, sorted_logp: torch.Tensor | list[torch.Tensor]) -> int:
        """sorted_logp [N] descending path log-probs of the best N nodes -> the node budget n* (0..N). A batch: one
        [N_b] per row -> the n* of every row's tree (tokens/s summed over the rows; a profile of that batch size)."""
        self.steps += 1
        rows = sorted_logp if isinstance(sorted_logp, list) else [sorted_logp]
        n, rate = self._rates(rows, drafted=True)
        best = int(rate.argmax())
        skip = bool(n[best] == 0)
        # a re-check that still says plain: wait twice as long before the next one; a tree that pays: back to RECHECK
        self.recheck = min(2 * self.recheck, RECHECK_MAX) if skip and self.skipping else RECHECK
        self.skipping, self.skipped = skip, 0
        i = self._probe(max(2, 2 * int(self.sizes[best])))
        return int(n[best if i is None else i])

    def chain_budget(self, sorted_logp: torch.Tensor | list[torch.Tensor]) -> int:
        """The same choice for a tree whose drafting cost is spent or negligible (the context's chain, a union drafted
        already): [N] descending path log-probs (a batch: one per row) -> n* (0: a plain step pays more). No probes,
        no change to the heads' skipping."""
        n, rate = self._rates(sorted_logp if isinstance(sorted_logp, list) else [sorted_logp], drafted=False)
        return int(n[int(rate.argmax())])

    def _rates(self, rows: list[torch.Tensor], drafted: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (n [S]: nodes of each size, expected tokens/s [S]) for rows of sorted path log-probs."""
        N = min(r.numel() for r in rows)
        # [N + 1]: E(n) - B, the expected extra tokens of the n best nodes, summed over the rows
        probs = sum(torch.cat([r.new_zeros(1), r[:N].exp().cumsum(0)]).double().cpu() for r in rows)
        n = (self.sizes - 1).clamp(max=N)  # [S]
        est, overhead = self._costs(len(rows))
        rate = (len(rows) + probs[n]) / (est + (overhead if drafted else 0.0))
        # a plain step pays no drafting cost; a tree must beat it by the calibration's known optimism (predicted
        # tokens/step run a few per cent high), else near-ties pick trees that then lose
        rate[n == 0] = PLAIN_MARGIN * len(rows) / est[n == 0]
        return n, rate

    def _costs(self, batch: int) -> tuple[torch.Tensor, float]:
        """-> ([S] seconds of a step per tree size, bookkeeping included; seconds of drafting for ``batch`` rows).
        Computed once per observation (a step asks two or three times: ~0.4 ms each, 3-5 % of a compiled step)."""
        key = (self.observations, id(self.seconds), self.seconds._version, self.heads_seconds)
        if self._costs_memo is None or self._costs_memo[0] != key:
            est = self.estimate() + (_robust(self.fixed) if self.fixed else 0.0)
            self._costs_memo = (key, est, _robust(self.overhead) if self.overhead else self.heads_seconds)
        return self._costs_memo[1], self._costs_memo[2] * batch

    def trees_can_pay(self, batch: int, depth: int) -> bool:
        """False when even trees whose every node is accepted (min(T, depth + 1) tokens per row) could not beat
        plain steps for ``batch`` rows at this profile's latencies and drafting cost: then do not draft at all."""
        est, overhead = self._costs(batch)
        best = batch * torch.clamp(self.sizes, max=depth + 1).double() / (est + overhead)
        return bool((best[self.sizes > 1] > batch / est[self.sizes == 1][0]).any())

    def may_draft(self, batch: int, depth: int) -> bool:
        """The batched decoder's question each step. While trees cannot pay even fully accepted (at the latencies
        known now), it does not draft, except once every UNPAID_RECHECK x batch steps, a draft whose budget probes a
        tree size: a prior too pessimistic about trees is corrected only by trees it observes."""
        if self.trees_can_pay(batch, depth):
            return self.want_draft(batch)
        self.unpaid += 1
        if self.unpaid % (UNPAID_RECHECK * batch):
            return False
        self.force_probe = True
        return True

    def want_draft(self, batch: int = 1) -> bool:
        """False while plain steps win (the last draft chose n = 0): decode without drafting, re-checking with a
        draft after ``recheck`` plain steps (x batch for a batch: a draft costs every row's heads); each re-check
        that still finds plain steps better doubles the wait (RECHECK .. RECHECK_MAX)."""
        if not self.skipping:
            return True
        self.skipped += 1
        return self.skipped % (self.recheck * batch) == 0

    def _probe(self, limit: int) -> int | None:
        """On the probe schedule: the anchor size up to ``limit`` (twice the chosen size: probes stay cheap, and a
        prior that is too pessimistic is walked back up one class at a time) observed least, else None."""
        forced, self.force_probe = self.force_probe, False
        # scheduled probes only where ``probe`` allows (not batches); a re-check's forced probe always
        if not forced and (not self.probe or (self.steps not in PROBE_STEPS and self.steps % 64)):
            return None
        sizes = self.sizes.tolist()
        anchors = [sizes.index(a) for a in ANCHORS if a in sizes and a <= limit and (a > 1 or not forced)]
        if not anchors:
            return None
        self._ensure()
        return min(anchors, key=lambda i: (len(self.observed[_size_class(sizes[i])]), i))

    def observe(
        self,
        size: int,
        verify_seconds: float,
        overhead_seconds: float | None = None,
        fixed_seconds: float | None = None,
    ) -> None:
        """A decode step verified ``size`` tokens in ``verify_seconds`` (+ heads/tree ``overhead_seconds`` when it
        drafted, + ``fixed_seconds`` of bookkeeping every step pays, tree or not: masks, cache moves)."""
        self.observations += 1
        if fixed_seconds is not None:
            self.fixed = (self.fixed + [float(fixed_seconds)])[-WINDOW:]
        self._ensure()
        i = min(int(torch.searchsorted(self.sizes, torch.tensor(size))), len(self.sizes) - 1)
        b = min(_size_class(size), len(self.observed) - 1)
        ratio = float(verify_seconds) / max(float(self.seconds[i]), 1e-12)
        self.observed[b] = (self.observed[b] + [ratio])[-WINDOW:]
        if overhead_seconds is not None:
            self.overhead = (self.overhead + [float(overhead_seconds)])[-WINDOW:]

    def _ensure(self) -> None:
        classes = _size_class(int(self.sizes[-1])) + 1
        if len(self.observed) != classes:
            self.observed = [[] for _ in range(classes)]

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "sizes": self.sizes.tolist(),
            "seconds": self.seconds.tolist(),
            "heads_seconds": self.heads_seconds,
        }

    @classmethod
    def from_dict(cls, d: dict) -> LatencyProfile:
        return cls(
            sizes=torch.tensor(d["sizes"], dtype=torch.long),
            seconds=torch.tensor(d["seconds"], dtype=torch.float64),
            heads_seconds=float(d["heads_seconds"]),
            key=d["key"],
        )


def _robust(values: list[float]) -> float:
    """Few observations: the minimum (timing noise only ever adds); then the median (robust to outliers)."""
    return min(values) if len(values) < 3 else statistics.median(values)


def _size_class(size: int) -> int:
    """Tree sizes 1, 2-3, 4-7, 8-15, ... -> 0, 1, 2, 3, ..."""
    return max(int(size), 1).bit_length() - 1


def _key_file(key: dict, cache_dir: str) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return os.path.join(cache_dir, f"latency-{digest}.json")


@torch.no_grad()
def measure_latency(
    model, sizes=DEFAULT_SIZES, prefix_len: int = 256, reps: int = 3, batch: int = 1, engine=None
) -> LatencyProfile:
    """Time one verify step (tree forward + output projection) per tree size, for ``batch`` rows each verifying a
    tree of that size: the sizes interleaved within each repetition (a burst of load hits all sizes alike), the
    median of ``reps`` after a warm-up round. ``engine`` (batch 1): time that engine's steps (a compiled engine's
    real costs: a tree padded to its bucket costs the bucket)."""
    if engine is not None and engine.name != "eager":
        return _measure_engine_latency(engine, sizes, prefix_len, reps, batch)
    seconds = time_steps(model, sizes, prefix_len, reps, batch)
    return LatencyProfile(
        sizes=torch.tensor(list(sizes), dtype=torch.long),
        seconds=torch.tensor(seconds, dtype=torch.float64),
        heads_seconds=0.0,
        key={},
    )


def _measure_engine_latency(engine, sizes, prefix_len: int, reps: int, batch: int = 1) -> LatencyProfile:
    if batch > 1:  # a batched engine (infer.engine.batch)
        from ..engine.batch import measure_batch_engine

        ms = measure_batch_engine(engine, list(sizes), batch, prefix_len, reps)
    else:
        from ..engine.single import measure_engine

        ms = measure_engine(engine, list(sizes), prefix_len, reps)
    return LatencyProfile(
        sizes=torch.tensor(list(sizes), dtype=torch.long),
        seconds=torch.tensor(ms, dtype=torch.float64) / 1000,
        heads_seconds=0.0,
        key={},
    )


@torch.no_grad()
def measure_overhead(model, heads, reps: int = 5, num_nodes: int = 16) -> float:
    """Seconds to draft one tree: the heads on one hidden state + building a dynamic tree of ``num_nodes``."""
    from ..decode.single import DecodeConfig, draft_tree

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    lm_head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    h = torch.randn(heads.config.hidden_size, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    root = torch.tensor(0, device=device)
    cfg = DecodeConfig(node_budget=num_nodes)
    runs = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        tree_buffers(draft_tree(heads, lm_head, embed, h, root, cfg, heads.num_heads, cfg.top_m)[0])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs[1:])


def load_or_measure(
    model,
    heads,
    device: str | torch.device = "cpu",
    sizes=DEFAULT_SIZES,
    cache_dir: str | None = None,
    force: bool = False,
    verbose: bool = True,
    batch: int = 1,
    engine=None,
) -> LatencyProfile:
    """The cached prior for this (model, dtype, device, threads, batch size, engine), measured (and checked) when
    there is none, or when ``force`` (``--remeasure``) or the cached one fails the monotonicity check; the heads'
    cost timed now."""
    key = profile_key(model, device) | ({"batch": batch} if batch > 1 else {})
    if engine is not None and engine.name != "eager":
        key |= {"engine": engine.name, "buckets": list(engine.buckets)}
        if getattr(engine, "fixed_shapes", None):  # a batched engine: its fixed-shape steps
            key["fixed"] = [list(shape) for shape in engine.fixed_shapes]
        if getattr(engine, "kernel", None):  # our kernels (and their version) in its steps
            key["kernel"] = engine.kernel
    cache_dir = cache_dir or os.path.join(cache_root(), "latency")
    path = _key_file(key, cache_dir)
    prof = None
    if not force and os.path.exists(path):
        with open(path) as f:
            prof = LatencyProfile.from_dict(json.load(f))
        if prof.key != key or prof.sizes.tolist() != list(sizes):
            prof = None
        elif non_monotone(prof.sizes, prof.seconds) is not None:
            if verbose:
                print(f"the cached latency profile {path} is not monotone: measuring again", flush=True)
            prof = None
    if prof is None:
        prof = _measure_checked(model, sizes, path, key, verbose, batch, engine)
    prof.heads_seconds = measure_overhead(model, heads) if heads is not None else 0.0
    return prof


def _measure_checked(
    model, sizes, path: str, key: dict, verbose: bool, batch: int = 1, engine=None
) -> LatencyProfile:
    if verbose:
        rows = f" x {batch} rows" if batch > 1 else ""
        print(
            f"measuring verify latency for {len(sizes)} tree sizes{rows}, {len(sizes) * 4} forward passes "
            f"(once; about as long as decoding ~{len(sizes) * 6 * batch} tokens; cached in {path}) ...",
            flush=True,
        )
    prof = measure_latency(model, sizes, batch=batch, engine=engine)
    bad = non_monotone(prof.sizes, prof.seconds)
    if bad is not None:
        if verbose:
            print(
                f"  {bad[1]} tokens measured faster than {bad[0]}: a busy machine? measuring again",
                flush=True,
            )
        prof = measure_latency(model, sizes, reps=5, batch=batch, engine=engine)
        bad = non_monotone(prof.sizes, prof.seconds)
    prof.key = key
    if bad is not None:  # still inconsistent: use a monotone envelope, let decoding correct it, cache nothing
        print(
            f"warning: verify latency is not monotone ({bad[1]} tokens faster than {bad[0]}): not cached; "
            "the budget will learn from the steps it observes",
            flush=True,
        )
        prof.seconds = torch.cummax(prof.seconds, 0).values
        return prof
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(prof.to_dict(), f, indent=1)
    os.replace(path + ".tmp", path)
    return prof


# tree sizes measured for batches of more than one row
BATCH_SIZES = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]


class BatchLatency:
    """Latency profiles over (batch size, tree size): the batch-1 profile, and one per power of two B > 1, measured
    the first time a batch that size needs it decodes (cached on disk like the batch-1 profile). A batch of B rows
    uses the profile of the next power of two (3 rows: 4's; a little pessimistic for trees). Each learns from the
    steps it times, as the batch-1 profile does."""

    def __init__(
        self,
        model,
        heads,
        device="cpu",
        single: LatencyProfile | None = None,
        verbose: bool = True,
        engine=None,
    ):
        self.model, self.heads, self.device, self.verbose = model, heads, device, verbose
        # a compiled batched engine measures its own profiles (an eager one: the DynamicCache path below)
        self.engine = engine if engine is not None and engine.name != "eager" else None
        self.profiles: dict[int, LatencyProfile] = {1: single} if single is not None else {}

    def for_batch(self, batch: int) -> LatencyProfile:
        batch = 1 << max(0, batch - 1).bit_length()  # the next power of two
        if batch not in self.profiles:
            sizes = DEFAULT_SIZES if batch == 1 else BATCH_SIZES
            engine = None
            if self.engine is not None:  # one row runs the one-row engine; its buckets bound the trees
                engine = self.engine if batch > 1 else self.engine.single
                sizes = [t for t in sizes if t <= self.engine.buckets[-1]]
            prof = load_or_measure(self.model, self.heads, self.device, sizes=sizes, verbose=self.verbose,
                                   batch=batch, engine=engine)  # fmt: skip
            prof.probe = (
                batch == 1
            )  # a probe step costs every row a big tree: batches trust their fresh profile
            self.profiles[batch] = prof
        return self.profiles[batch]
