import itertools

import pytest
import torch

from infer.draft.tree import (
    conditional_static_tree,
    conditional_tree,
    dynamic_tree,
    sparse_tree_from_accuracies,
    static_tree,
    top_nodes,
    tree_buffers,
    tree_tokens,
)


def test_static_tree_buffers_match_hand_drawn_tree():
    #            root(0)
    #           /      \
    #      (0,)1        (1,)2
    #      /    \          \
    # (0,0)3  (0,1)4     (1,0)5
    #   |
    # (0,0,0)6
    tree = static_tree([(1, 0), (0,), (0, 1), (1,), (0, 0, 0), (0, 0)])  # order does not matter
    b = tree_buffers(tree)
    expected_mask = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0],
            [1, 0, 1, 0, 0, 0, 0],
            [1, 1, 0, 1, 0, 0, 0],
            [1, 1, 0, 0, 1, 0, 0],
            [1, 0, 1, 0, 0, 1, 0],
            [1, 1, 0, 1, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(b.tree_mask, expected_mask)
    assert b.position_offsets.tolist() == [0, 1, 1, 2, 2, 2, 3]
    assert b.retrieve_indices.tolist() == [[0, 1, 4, -1], [0, 2, 5, -1], [0, 1, 3, 6]]
    assert tree.parents.tolist() == [0, 0, 0, 1, 1, 2, 3]
    # Tokens: node at depth d takes head d-1's token at its rank.
    top = torch.tensor([[10, 11], [20, 21], [30, 31]])
    assert tree_tokens(tree, torch.tensor(7), top).tolist() == [7, 10, 11, 20, 21, 20, 30]


def test_static_tree_rejects_missing_prefix_and_empty():
    with pytest.raises(ValueError, match="without its prefix"):
        static_tree([(0,), (1, 0)])
    with pytest.raises(ValueError, match="empty"):
        static_tree([])


def _brute_force_scores(logp, n):
    K, m = logp.shape
    scores = []
    for d in range(1, K + 1):
        for path in itertools.product(range(m), repeat=d):
            scores.append(sum(float(logp[i, r]) for i, r in enumerate(path)))
    return sorted(scores, reverse=True)[:n]


@pytest.mark.parametrize("K,m,n", [(1, 4, 3), (2, 3, 5), (3, 4, 20), (4, 3, 30), (3, 5, 200)])
@pytest.mark.parametrize("seed", range(5))
def test_dynamic_tree_is_a_tree_holding_the_n_best_paths(K, m, n, seed):
    g = torch.Generator().manual_seed(seed)
    logp = torch.randn(K, 10, generator=g).mul(2).log_softmax(-1).topk(m).values  # sorted top-m per head
    tree = dynamic_tree(logp, n)
    T = tree.size
    assert T == 1 + min(n, sum(m**d for d in range(1, K + 1)))
    # A tree: parents precede children, depth grows by one, and the path scores add up.
    assert (tree.parents[1:] < torch.arange(1, T)).all()
    assert torch.equal(tree.depth[1:], tree.depth[tree.parents[1:]] + 1)
    node_logp = logp[tree.depth[1:] - 1, tree.rank[1:]]
    assert torch.allclose(tree.score[1:], tree.score[tree.parents[1:]] + node_logp, atol=1e-5)
    # Siblings are distinct ranks.
    pairs = set(zip(tree.parents.tolist()[1:], tree.rank.tolist()[1:]))
    assert len(pairs) == T - 1
    # It holds the n best paths of the Cartesian product (compared with brute force).
    got = sorted(tree.score[1:].tolist(), reverse=True)
    assert got == pytest.approx(_brute_force_scores(logp, n), abs=1e-5)


def test_dynamic_tree_ties_keep_parents():
    # All probabilities equal: many ties. The parent of every kept node must be kept (ties go shallower).
    logp = torch.full((3, 4), -1.0)
    tree = dynamic_tree(logp, 10)
    assert (tree.depth[1:5] == 1).all() and (tree.depth[5:] == 2).all()
    assert (tree.parents[1:] < torch.arange(1, tree.size)).all()


def test_sparse_tree_from_accuracies_grows_by_product():
    acc = [[0.6, 0.2, 0.1], [0.5, 0.2], [0.4]]
    choices = sparse_tree_from_accuracies(acc, 5)
    # products: (0,)=.6 (0,0)=.3 (1,)=.2 (0,1)=.12 (0,0,0)=.12 (2,)=.1 (1,0)=.1
    assert choices[:3] == [(0,), (0, 0), (1,)]
    assert set(choices[3:]) == {(0, 1), (0, 0, 0)}
    static_tree(choices)  # every prefix present: a valid tree


def _path_expand(m, vocab=50, seed=0):
    """A deterministic path-conditioned drafter: children and their log-probs depend on the whole path."""
    calls = []

    def children(path):
        g = torch.Generator().manual_seed(hash((seed, tuple(path))) % (2**31))
        logp = torch.randn(vocab, generator=g).mul(2).log_softmax(-1).topk(m)
        return logp.indices, logp.values

    def expand(d, paths):
        calls.append(paths.shape[0])
        out = [children(p) for p in paths.tolist()]
        return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])

    return expand, children, calls


@pytest.mark.parametrize("K,m,n", [(1, 4, 3), (2, 3, 5), (3, 4, 20), (4, 3, 30), (3, 3, 39)])
@pytest.mark.parametrize("seed", range(4))
def test_conditional_tree_holds_the_n_best_paths_by_brute_force(K, m, n, seed):
    expand, children, calls = _path_expand(m, seed=seed)
    tree = conditional_tree(expand, torch.tensor(7), K, n)
    # Brute force: every path of the product, scored by its conditional log-probs.
    scores, stack = [], [((7,), 0.0)]
    while stack:
        path, score = stack.pop()
        if len(path) > K:
            continue
        toks, logp = children(list(path))
        for t, lp in zip(toks.tolist(), logp.tolist()):
            if len(path) <= K:
                scores.append(score + lp)
                stack.append((path + (t,), score + lp))
    best = sorted((s for s in scores), reverse=True)[:n]
    assert sorted(tree.score[1:].tolist(), reverse=True) == pytest.approx(best, abs=1e-5)
    # A tree whose tokens are the drafter's children of their parent's path, with path scores that add up.
    T = tree.size
    assert (tree.parents[1:] < torch.arange(1, T)).all()
    assert torch.equal(tree.depth[1:], tree.depth[tree.parents[1:]] + 1)
    for i in range(1, T):
        path, j = [], int(tree.parents[i])
        while j != 0:
            path.insert(0, int(tree.tokens[j]))
            j = int(tree.parents[j])
        toks, logp = children([7] + path)
        r = int(tree.rank[i])
        assert int(tree.tokens[i]) == int(toks[r])
        assert float(tree.score[i]) == pytest.approx(float(tree.score[tree.parents[i]] + logp[r]), abs=1e-5)
    assert max(calls) <= n and len(calls) == K  # one batched call per depth, at most n frontier nodes


def test_conditional_tree_with_shared_children_equals_dynamic_tree():
    g = torch.Generator().manual_seed(3)
    logp = torch.randn(3, 10, generator=g).log_softmax(-1).topk(4).values
    a = dynamic_tree(logp, 12)
    b = conditional_tree(lambda d, p: (torch.arange(4).expand(len(p), 4), logp[d].expand(len(p), 4)),
                         torch.tensor(0), 3, 12)  # fmt: skip
    for x, y in ((a.parents, b.parents), (a.depth, b.depth), (a.rank, b.rank), (a.score, b.score)):
        assert torch.equal(x, y)


def test_conditional_static_tree_and_top_nodes():
    expand, children, _ = _path_expand(3, seed=1)
    static = static_tree([(0,), (1,), (0, 0), (0, 2), (1, 0), (0, 0, 1)])
    tree = conditional_static_tree(static, expand, torch.tensor(7))
    t0 = children([7])[0]
    assert tree.tokens[1:3].tolist() == t0[:2].tolist()
    assert int(tree.tokens[4]) == int(children([7, int(t0[0])])[0][2])  # node (0, 2)
    assert int(tree.tokens[5]) == int(children([7, int(t0[1])])[0][0])  # node (1, 0)
    # top_nodes keeps the n best and stays a tree.
    full = conditional_tree(expand, torch.tensor(7), 3, 20)
    for n in (0, 1, 5, 19, 20):
        cut = top_nodes(full, n)
        assert cut.size == n + 1
        assert (cut.parents[1:] < torch.arange(1, n + 1)).all()
        ref = conditional_tree(expand, torch.tensor(7), 3, n) if n else None
        if ref is not None:
            assert sorted(cut.score.tolist()) == pytest.approx(sorted(ref.score.tolist()))
            assert sorted(cut.tokens[1:].tolist()) == sorted(ref.tokens[1:].tolist())


def test_conditional_tree_beam_expands_fewer_nodes_and_keeps_the_best():
    expand, _, calls = _path_expand(4, seed=2)
    exact = conditional_tree(expand, torch.tensor(7), 3, 30)
    calls.clear()
    narrow = conditional_tree(expand, torch.tensor(7), 3, 30, beam=5)
    assert max(calls) <= 5 and narrow.size == exact.size
    best5 = sorted(exact.score[1:].tolist(), reverse=True)[:5]
    assert sorted(narrow.score[1:].tolist(), reverse=True)[:5] == pytest.approx(best5)
    assert (narrow.parents[1:] < torch.arange(1, narrow.size)).all()
    assert torch.equal(narrow.depth[1:], narrow.depth[narrow.parents[1:]] + 1)


def test_conditional_tree_stops_where_the_frontier_mass_is_negligible():
    expand, children, calls = _path_expand(4, seed=3)
    mass = float(children([7])[1].exp().sum())  # depth 1's frontier: the root's 4 children
    cut = conditional_tree(expand, torch.tensor(7), 4, 40, min_mass=mass * 1.01)
    assert len(calls) == 1 and int(cut.depth.max()) == 1 and cut.size == 5
    calls.clear()
    conditional_tree(expand, torch.tensor(7), 4, 40, min_mass=mass * 0.99)
    assert len(calls) >= 2
    calls.clear()
    conditional_tree(expand, torch.tensor(7), 4, 40, min_mass=1e-9)
    assert len(calls) == 4
