"""The Q head's loss terms (seqrec/nn/losses.py) one by one, against figures worked out by hand."""
import pytest
import torch

from seqrec.running.distributed import SINGLE
from seqrec.nn.losses import bootstrap_values, negative_items, sampled_items, value_expectile_loss


class TableNet:
    """A network whose Q(s, a) is a fixed table row per state (state s is the index s) and V(s) a list."""

    def __init__(self, q: list[list[float]], v: list[float] | None = None):
        self.q, self.v = torch.tensor(q), torch.tensor(v or [0.0] * len(q))

    def q_of(self, states, items):
        return self.q[states, items]

    def state_value(self, states):
        return self.v[states]


def test_value_expectile_loss_by_hand():
    """Two trained steps (one row is padding): diffs Q_target - V = 3 - 1 = 2 and 0 - 2 = -2, tau 0.8:
    0.8 * 4 and 0.2 * 4, over a count of 2 -> 2.0."""
    target = TableNet([[0.0, 3.0], [0.0, 0.0]])
    net = TableNet([[0.0, 0.0], [0.0, 0.0]], v=[1.0, 2.0])
    states = torch.tensor([[0, 1, 1]])
    items = torch.tensor([[1, 0, 1]])
    weight = torch.tensor([[1.0, 0.0, 1.0]])
    got = value_expectile_loss(net, target, states, states, items, weight, 0.8, torch.tensor(2.0))
    assert got.item() == pytest.approx((0.8 * 4 + 0.2 * 4) / 2)


def test_the_expectile_bootstrap_reads_the_value_head_and_logged_reads_the_logged_q():
    net, target = TableNet([[0.0, 0.0]], v=[5.0]), TableNet([[0.0, 7.0]])
    states = torch.tensor([0, 0])
    assert bootstrap_values(net, target, states, states, torch.tensor([1, 1]), "expectile").tolist() == [5.0, 5.0]
    assert bootstrap_values(net, target, states, states, torch.tensor([1, 0]), "logged").tolist() == [7.0, 0.0]


def test_negative_items_keep_the_slate_and_fill_its_gaps_with_uniform_draws():
    shown = torch.tensor([[4, 2, 0], [0, 0, 0]])
    drawn = sampled_items((2, 3), 9, seed=3, step=5, device="cpu")
    got = negative_items(2, 3, shown, 9, 3, 5, SINGLE, "cpu")
    assert got[0, :2].tolist() == [4, 2] and got[0, 2] == drawn[0, 2]
    assert torch.equal(got[1], drawn[1])
    assert torch.equal(negative_items(2, 3, None, 9, 3, 5, SINGLE, "cpu"), drawn)
