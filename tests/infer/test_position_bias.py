import torch

from infer import position_bias
from infer.position_bias import score_positions, visited_positions


def test_visited_positions_follow_the_accept_lengths():
    assert visited_positions(5, [1, 3, 2]) == [4, 5, 8]


def test_score_positions_by_hand():
    seq = torch.tensor([7, 1, 2, 3, 4, 5, 6])  # T = 7
    top1 = torch.tensor(
        [[3, 0, 4, 0, 6, 0, 0], [4, 5, 0, 0, 0, 0, 0]]
    )  # head 0 guesses seq[q+2], head 1 seq[q+3]
    out = score_positions(top1, seq, start=1, visited=[2, 4])
    # head 0: q = 1..4 -> guesses 0,4,0,6 vs seq[3..6] = 3,4,5,6: hits at q=2 and q=4 (both visited)
    assert out[0].tolist() == [2, 4, 2, 2]
    # head 1: q = 1..3 -> guesses 5,0,0 vs seq[4..6] = 4,5,6: no hit; visited q=2 only
    assert out[1].tolist() == [0, 3, 0, 1]


def test_cli_runs_on_a_tiny_model(folders, calibrated_heads, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello there\nsecond prompt\n")
    argv = ["--model", str(folders / "model"), "--heads", str(calibrated_heads), "--prompts", str(prompts)]
    position_bias.main(argv + ["--max-new-tokens", "10", "--node-budget", "4"])
    out = capsys.readouterr().out
    assert "where decoding queried the heads" in out and "tokens/step: predicted" in out
    assert len([line for line in out.splitlines() if line[:4].strip().isdigit()]) == 3  # one row per head


def test_cli_runs_with_sequential_heads(folders, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello there\n")
    argv = [
        "--model",
        str(folders / "model"),
        "--heads",
        str(folders / "seq_heads"),
        "--prompts",
        str(prompts),
    ]
    position_bias.main(argv + ["--max-new-tokens", "10", "--node-budget", "4"])
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if line[:4].strip().isdigit()]) == 3
