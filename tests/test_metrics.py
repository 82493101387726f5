"""Ranking metrics against hand-computed cases."""
import math

import pytest
import torch

from seqrec.metrics import hit_rate, ndcg, rank_of_targets, rank_of_targets_linear, reciprocal_rank, summarize


def mask_padding(scores):
    scores = scores.clone()
    scores[:, 0] = float("-inf")
    return scores


def test_ranks_by_hand():
    scores = torch.tensor([[0.0, 0.9, 0.1, 0.5, 0.3],    # target 3 (0.5): only 0.9 above -> rank 2
                           [0.0, 0.2, 0.2, 0.2, 0.1],    # target 2 ties with 1 and 3 -> rank 1
                           [9.0, 0.1, 0.2, 0.3, 0.4]])   # target 1, padding column masked -> rank 4
    ranks = rank_of_targets(mask_padding(scores), torch.tensor([3, 2, 1]))
    assert ranks.tolist() == [2, 1, 4]


def test_hr_and_ndcg_by_hand():
    ranks = torch.tensor([1, 2, 3, 10, 11])
    assert hit_rate(ranks, 1).tolist() == [1, 0, 0, 0, 0]
    assert hit_rate(ranks, 10).tolist() == [1, 1, 1, 1, 0]
    expected = [1.0, 1 / math.log2(3), 1 / math.log2(4), 1 / math.log2(11), 0.0]
    assert ndcg(ranks, 10).tolist() == pytest.approx(expected)
    assert ndcg(ranks, 2).tolist() == pytest.approx([1.0, 1 / math.log2(3), 0, 0, 0])
    assert reciprocal_rank(ranks).tolist() == pytest.approx([1, 1 / 2, 1 / 3, 1 / 10, 1 / 11])


def test_summary_separates_clicks_and_purchases():
    ranks = torch.tensor([1, 3, 30, 2])
    purchase = torch.tensor([False, False, True, True])
    s = summarize(ranks, purchase, ks=[5])
    assert s["click/HR@5"] == pytest.approx(1.0)
    assert s["click/NDCG@5"] == pytest.approx((1.0 + 0.5) / 2)
    assert s["purchase/HR@5"] == pytest.approx(0.5)
    assert s["purchase/NDCG@5"] == pytest.approx((0 + 1 / math.log2(3)) / 2)
    assert s["all/HR@5"] == pytest.approx(3 / 4)
    assert s["all/MRR"] == pytest.approx((1 + 1 / 3 + 1 / 30 + 1 / 2) / 4)
    assert s["purchase/MRR"] == pytest.approx((1 / 30 + 1 / 2) / 2)


def test_kind_without_events_is_nan():
    s = summarize(torch.tensor([1, 2]), torch.tensor([False, False]), ks=[10])
    assert math.isnan(s["purchase/HR@10"]) and s["click/HR@10"] == 1.0


@pytest.mark.parametrize("chunk", [1, 3, 7, 40, 1000])
@pytest.mark.parametrize("with_seen", [False, True])
@pytest.mark.parametrize("integer_valued", [False, True])
def test_streamed_ranks_equal_ranking_the_full_score_matrix(chunk, with_seen, integer_valued):
    """Integer-valued scores are exact in any summation order, so they test ties (many) exactly."""
    g = torch.Generator().manual_seed(chunk)
    B, H, N = 64, 5, 40

    def draw(*shape):
        if integer_valued:
            return torch.randint(-2, 3, shape, generator=g).double()
        return torch.randn(*shape, generator=g, dtype=torch.float64)
    features, weight, bias = draw(B, H), draw(N + 1, H), draw(N + 1)
    targets = torch.randint(1, N + 1, (B,), generator=g)
    scores = mask_padding(features @ weight.T + bias)
    seen = None
    if with_seen:                                                # repeats, padding, and sometimes the target
        seen = torch.randint(0, N + 1, (B, 6), generator=g)
        seen[::4, 0] = targets[::4]
        scores = scores.scatter(1, seen, float("-inf"))
    expected = rank_of_targets(scores, targets)                  # a masked target ranks below every other item
    ranks = rank_of_targets_linear(features, weight, bias, targets, seen, chunk=chunk)
    assert ranks.tolist() == expected.tolist()
    if with_seen:
        assert (ranks[::4] == N + 1 - (scores[::4, 1:] == float("-inf")).sum(1)).all()
    if integer_valued:
        assert (scores.gather(1, targets[:, None]) == scores).sum() > 2 * B   # ties did occur
