import itertools

import pytest
import torch

from infer.tree import dynamic_tree, sparse_tree_from_accuracies, static_tree, tree_buffers, tree_tokens


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
