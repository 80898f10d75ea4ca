from collections import Counter

from train.head_vocab import choose_vocab, coverage


def test_choose_vocab_keeps_most_frequent_and_forced_tokens():
    counts = Counter({5: 10, 7: 8, 9: 3, 11: 1})
    assert choose_vocab(counts, 2) == [5, 7]
    assert choose_vocab(counts, 3, always={2}) == [2, 5, 7]
    assert coverage(counts, [5, 7]) == 18 / 22
    assert choose_vocab(counts, 100) == [5, 7, 9, 11]


def test_out_must_not_be_the_input_folder(tmp_path):
    import pytest

    from infer.draft.heads import MedusaConfig, MedusaHeads
    from train.head_vocab import main

    heads = tmp_path / "heads"
    MedusaHeads(MedusaConfig(hidden_size=8, vocab_size=30, medusa_num_heads=1)).save_pretrained(str(heads))
    before = (heads / "config.json").read_text()
    with pytest.raises(SystemExit):
        main([str(heads), "--data", "unused.jsonl", "--out", str(heads)])
    assert (heads / "config.json").read_text() == before  # nothing rewritten
