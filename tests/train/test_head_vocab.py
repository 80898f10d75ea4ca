from collections import Counter

from train.head_vocab import choose_vocab, coverage


def test_choose_vocab_keeps_most_frequent_and_forced_tokens():
    counts = Counter({5: 10, 7: 8, 9: 3, 11: 1})
    assert choose_vocab(counts, 2) == [5, 7]
    assert choose_vocab(counts, 3, always={2}) == [2, 5, 7]
    assert coverage(counts, [5, 7]) == 18 / 22
    assert choose_vocab(counts, 100) == [5, 7, 9, 11]
