"""Ranking metrics against hand-computed cases; the streamed ranking against the full score matrix."""
import itertools
import math

import pytest
import torch

from seqrec.evaluation.metrics import NaNScores, hit_rate, ndcg, rank_of_targets, reciprocal_rank, summarize
from seqrec.nn.streamed import rank_of_targets_linear


def mask_padding(scores):
    scores = scores.clone()
    scores[:, 0] = float("-inf")
    return scores


def test_ranks_by_hand():
    scores = torch.tensor([[0.0, 0.9, 0.1, 0.5, 0.3],    # target 3 (0.5): only 0.9 above, no tie
                           [0.0, 0.2, 0.2, 0.2, 0.1],    # target 2: nothing above, ties with 1 and 3
                           [9.0, 0.1, 0.2, 0.3, 0.4]])   # target 1, padding column masked: 3 above
    higher, ties = rank_of_targets(mask_padding(scores), torch.tensor([3, 2, 1]))
    assert higher.tolist() == [1, 0, 3] and ties.tolist() == [0, 2, 0]


def expected_over_tie_breaks(higher, ties, metric):
    """The metric averaged over every rank a uniform tie-break can give, by a loop."""
    return sum(metric(higher + 1 + j) for j in range(ties + 1)) / (ties + 1)


@pytest.mark.parametrize("higher,ties", list(itertools.product([0, 1, 3, 9, 10, 12], [0, 1, 2, 7, 30])))
def test_metrics_are_expectations_over_tie_breaks(higher, ties):
    h, t = torch.tensor([higher]), torch.tensor([ties])
    for k in (1, 5, 10):
        assert hit_rate(h, t, k).item() == pytest.approx(expected_over_tie_breaks(higher, ties, lambda r: float(r <= k)))
        assert ndcg(h, t, k).item() == pytest.approx(
            expected_over_tie_breaks(higher, ties, lambda r: 1 / math.log2(r + 1) if r <= k else 0.0), rel=1e-6)
    assert reciprocal_rank(h, t).item() == pytest.approx(expected_over_tie_breaks(higher, ties, lambda r: 1 / r), rel=1e-6)


def test_hr_and_ndcg_by_hand():
    ranks = torch.tensor([1, 2, 3, 10, 11])
    higher, none = ranks - 1, torch.zeros_like(ranks)
    assert hit_rate(higher, none, 1).tolist() == [1, 0, 0, 0, 0]
    assert hit_rate(higher, none, 10).tolist() == [1, 1, 1, 1, 0]
    expected = [1.0, 1 / math.log2(3), 1 / math.log2(4), 1 / math.log2(11), 0.0]
    assert ndcg(higher, none, 10).tolist() == pytest.approx(expected)
    assert ndcg(higher, none, 2).tolist() == pytest.approx([1.0, 1 / math.log2(3), 0, 0, 0])
    assert reciprocal_rank(higher, none).tolist() == pytest.approx([1, 1 / 2, 1 / 3, 1 / 10, 1 / 11])
    # Three items tied at the top: the target is first, second or third with chance 1/3 each.
    assert hit_rate(torch.tensor([0]), torch.tensor([2]), 1).item() == pytest.approx(1 / 3)
    assert ndcg(torch.tensor([0]), torch.tensor([2]), 10).item() == pytest.approx((1 + 1 / math.log2(3) + 0.5) / 3)


def test_a_constant_scorer_is_at_chance_level():
    """Every item scored the same: HR@10 = 10 / N exactly (ties used to count in the target's favour: 1.0)."""
    N, B = 957, 50
    features, weight, bias = torch.randn(B, 8), torch.zeros(N + 1, 8), torch.full((N + 1,), 0.3)
    targets = torch.randint(1, N + 1, (B,))
    higher, ties = rank_of_targets_linear(features, weight, bias, targets)
    assert (higher == 0).all() and (ties == N - 1).all()
    s = summarize(higher, ties, torch.zeros(B, dtype=torch.bool), ks=[10])
    assert s["all/HR@10"] == pytest.approx(10 / N) and s["all/MRR"] == pytest.approx(
        sum(1 / r for r in range(1, N + 1)) / N)


def test_a_collapsed_head_is_at_chance_level_despite_rounding():
    """Every item's row equal: a GEMM block and the target's dot product round differently, yet all tie."""
    g = torch.Generator().manual_seed(0)
    N, B, H = 500, 64, 64
    features = torch.randn(B, H, generator=g) * 3
    weight = torch.randn(1, H, generator=g).expand(N + 1, H).contiguous()
    bias = torch.full((N + 1,), 0.7)
    higher, ties = rank_of_targets_linear(features, weight, bias, torch.randint(1, N + 1, (B,), generator=g))
    assert (higher == 0).all() and (ties == N - 1).all()


def test_summary_separates_clicks_and_purchases():
    higher = torch.tensor([1, 3, 30, 2]) - 1
    purchase = torch.tensor([False, False, True, True])
    s = summarize(higher, torch.zeros_like(higher), purchase, ks=[5])
    assert s["click/HR@5"] == pytest.approx(1.0)
    assert s["click/NDCG@5"] == pytest.approx((1.0 + 0.5) / 2)
    assert s["purchase/HR@5"] == pytest.approx(0.5)
    assert s["purchase/NDCG@5"] == pytest.approx((0 + 1 / math.log2(3)) / 2)
    assert s["all/HR@5"] == pytest.approx(3 / 4)
    assert s["all/MRR"] == pytest.approx((1 + 1 / 3 + 1 / 30 + 1 / 2) / 4)
    assert s["purchase/MRR"] == pytest.approx((1 / 30 + 1 / 2) / 2)


def test_kind_without_events_is_nan():
    s = summarize(torch.tensor([0, 1]), torch.tensor([0, 0]), torch.tensor([False, False]), ks=[10])
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
    got = rank_of_targets_linear(features, weight, bias, targets, seen, chunk=chunk)
    assert got[0].tolist() == expected[0].tolist() and got[1].tolist() == expected[1].tolist()
    if with_seen:
        assert (got[0][::4] == N - (scores[::4, 1:] == float("-inf")).sum(1)).all() and (got[1][::4] == 0).all()
    if integer_valued:
        assert expected[1].sum() > B   # ties did occur


def test_a_nan_score_is_an_error_not_the_top_rank():
    scores = mask_padding(torch.tensor([[0.0, 0.9, 0.1, 0.5], [0.0, 0.2, math.nan, 0.1]]))
    with pytest.raises(NaNScores, match="1 of 2 rows hold NaN"):
        rank_of_targets(scores, torch.tensor([3, 2]))


@pytest.mark.parametrize("where", ["features", "weight", "bias"])
def test_the_streamed_ranking_refuses_a_layer_that_would_score_nan(where):
    torch.manual_seed(0)
    layer = {"features": torch.randn(3, 4), "weight": torch.randn(6, 4), "bias": torch.randn(6)}
    layer[where].view(-1)[1] = math.inf if where == "weight" else math.nan
    with pytest.raises(NaNScores, match="hold NaN or inf"):
        rank_of_targets_linear(layer["features"], layer["weight"], layer["bias"], torch.tensor([1, 2, 3]))
