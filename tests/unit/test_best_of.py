"""best_of ranking, as pure logic."""

from engine.best_of import mean_logprob, pick
from engine.outputs import ChoiceDelta


def choice(index, tokens, cum):
    return ChoiceDelta(index=index, text=str(index), token_ids=list(range(tokens)), logprobs=None, cumulative_logprob=cum)


def test_ranks_by_mean_not_total_logprob():
    long_but_likely = choice(0, 10, -5.0)  # mean -0.5
    short_unlikely = choice(1, 2, -3.0)  # mean -1.5, total higher
    assert [c.text for c in pick([short_unlikely, long_but_likely], 1)] == ["0"]


def test_keeps_n_best_reindexed_in_rank_order():
    chosen = pick([choice(0, 4, -8.0), choice(1, 4, -2.0), choice(2, 4, -4.0), choice(3, 4, -1.0)], 2)
    assert [c.text for c in chosen] == ["3", "1"]
    assert [c.index for c in chosen] == [0, 1]


def test_ties_keep_generation_order_and_empty_output_ranks_last():
    assert [c.text for c in pick([choice(0, 2, -2.0), choice(1, 2, -2.0)], 2)] == ["0", "1"]
    assert mean_logprob(choice(0, 0, 0.0)) == float("-inf")
    assert [c.text for c in pick([choice(0, 0, 0.0), choice(1, 3, -9.0)], 1)] == ["1"]
