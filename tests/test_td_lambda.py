"""lambda_returns against a naive loop over the forward-view definition (weighted n-step returns)."""
import itertools

import pytest
import torch

from td_lambda import lambda_returns, td_targets


def n_step_return(r, v, d, k, n, gamma):
    """sum_{i<n} gamma^i r_{k+i} + gamma^n V(s_{k+n}), stopping (no bootstrap) at a done."""
    g, disc = 0.0, 1.0
    for i in range(n):
        g += disc * r[k + i]
        if d[k + i]:
            return g
        disc *= gamma
    return g + disc * v[k + n - 1]


def naive_lambda_returns(rewards, next_values, dones, gamma, lam, truncated=None):
    """G^lambda_k = (1-lam) sum_{n=1}^{H-1} lam^(n-1) G^(n)_k + lam^(H-1) G^(H)_k, H = T - k, or up to
    and including the first truncated step from k on (the data ends there: a shorter window)."""
    B, T = rewards.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        r, v, d = rewards[b].tolist(), next_values[b].tolist(), dones[b].tolist()
        cut = [False] * T if truncated is None else truncated[b].tolist()
        for k in range(T):
            H = next((j - k + 1 for j in range(k, T) if cut[j]), T - k)
            total = sum((1 - lam) * lam ** (n - 1) * n_step_return(r, v, d, k, n, gamma) for n in range(1, H))
            out[b, k] = total + lam ** (H - 1) * n_step_return(r, v, d, k, H, gamma)
    return out


@pytest.mark.parametrize("B,T", [(1, 1), (3, 2), (5, 3), (4, 5), (2, 8)])
@pytest.mark.parametrize("gamma,lam", list(itertools.product([0.0, 0.5, 0.99, 1.0], [0.0, 0.3, 0.8, 1.0])))
def test_matches_forward_view(B, T, gamma, lam):
    g = torch.Generator().manual_seed(B * 100 + T)
    rewards = torch.rand(B, T, generator=g, dtype=torch.float64)
    next_values = torch.randn(B, T, generator=g, dtype=torch.float64)
    dones = torch.rand(B, T, generator=g) < 0.3
    got = lambda_returns(rewards, next_values, dones, gamma, lam)
    torch.testing.assert_close(got, naive_lambda_returns(rewards, next_values, dones, gamma, lam))


@pytest.mark.parametrize("pattern", [[0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 1], [1, 1, 1, 1]])
def test_every_done_pattern(pattern):
    rewards = torch.tensor([[0.2, 1.0, 0.2, 0.2]], dtype=torch.float64)
    next_values = torch.tensor([[1.5, -0.5, 2.0, 3.0]], dtype=torch.float64)
    dones = torch.tensor([pattern], dtype=torch.bool)
    for gamma, lam in [(0.5, 0.8), (0.9, 0.5)]:
        torch.testing.assert_close(lambda_returns(rewards, next_values, dones, gamma, lam),
                                   naive_lambda_returns(rewards, next_values, dones, gamma, lam))


@pytest.mark.parametrize("T", [1, 3, 5])
@pytest.mark.parametrize("gamma,lam", [(0.5, 0.0), (0.5, 0.8), (0.9, 1.0)])
def test_truncation_matches_a_shorter_window(T, gamma, lam):
    g = torch.Generator().manual_seed(T)
    rewards = torch.rand(6, T, generator=g, dtype=torch.float64)
    next_values = torch.randn(6, T, generator=g, dtype=torch.float64)
    dones = torch.rand(6, T, generator=g) < 0.2
    truncated = torch.rand(6, T, generator=g) < 0.4
    got = lambda_returns(rewards, next_values, dones, gamma, lam, truncated)
    torch.testing.assert_close(got, naive_lambda_returns(rewards, next_values, dones, gamma, lam, truncated))


def test_truncation_bootstraps_where_a_done_does_not():
    rewards = torch.tensor([[0.2, 1.0, 0.2]])
    next_values = torch.tensor([[2.0, 3.0, 4.0]])
    at_1 = torch.tensor([[False, True, False]])
    none = torch.zeros(1, 3, dtype=torch.bool)
    # lam = 1: G_0 = r0 + g r1 + g^2 V2 (V2 = next_values[:, 1]) when truncated after step 1, r0 + g r1 when done
    assert lambda_returns(rewards, next_values, none, 0.5, 1.0, at_1)[0, 0].item() == pytest.approx(0.2 + 0.5 + 0.25 * 3.0)
    assert lambda_returns(rewards, next_values, at_1, 0.5, 1.0, none)[0, 0].item() == pytest.approx(0.2 + 0.5)


def test_lambda_zero_is_one_step_target():
    rewards = torch.tensor([[0.2, 1.0, 0.2]])
    next_values = torch.tensor([[2.0, 3.0, 4.0]])
    dones = torch.tensor([[False, True, False]])
    got = lambda_returns(rewards, next_values, dones, gamma=0.5, lam=0.0)
    torch.testing.assert_close(got, torch.tensor([[0.2 + 0.5 * 2.0, 1.0, 0.2 + 0.5 * 4.0]]))


def test_lambda_one_is_t_step_return():
    rewards = torch.tensor([[0.2, 1.0, 0.2]])
    next_values = torch.tensor([[2.0, 3.0, 4.0]])
    no_done = torch.zeros(1, 3, dtype=torch.bool)
    got = lambda_returns(rewards, next_values, no_done, gamma=0.5, lam=1.0)
    # G_0 = r0 + g r1 + g^2 r2 + g^3 V3, where V3 = next_values[:, 2]
    assert got[0, 0].item() == pytest.approx(0.2 + 0.5 * 1.0 + 0.25 * 0.2 + 0.125 * 4.0)
    # A done at step 1 ends the sum there: G_0 = r0 + g r1.
    done_1 = torch.tensor([[False, True, False]])
    assert lambda_returns(rewards, next_values, done_1, 0.5, 1.0)[0, 0].item() == pytest.approx(0.2 + 0.5)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        lambda_returns(torch.zeros(2, 3), torch.zeros(2, 2), torch.zeros(2, 3, dtype=torch.bool), 0.5, 0.5)


@pytest.mark.parametrize("horizon", [None, 1, 3])
def test_td_targets_are_each_trained_steps_forward_view_return(horizon):
    """The loss's one call for both paths: a window's steps each to the window's end; a chunk's first
    W - T + 1 steps each over its own T steps (the window that starts there)."""
    g = torch.Generator().manual_seed(7)
    rewards, values = torch.rand(3, 6, generator=g, dtype=torch.float64), torch.randn(3, 6, generator=g, dtype=torch.float64)
    dones, truncated = torch.rand(3, 6, generator=g) < 0.2, torch.rand(3, 6, generator=g) < 0.2
    got = td_targets(rewards, values, dones, 0.9, 0.7, truncated, horizon)
    if horizon is None:
        torch.testing.assert_close(got, naive_lambda_returns(rewards, values, dones, 0.9, 0.7, truncated))
        return
    assert got.shape == (3, 6 - horizon + 1)
    for j in range(6 - horizon + 1):
        w = slice(j, j + horizon)
        torch.testing.assert_close(got[:, j], naive_lambda_returns(rewards[:, w], values[:, w], dones[:, w], 0.9, 0.7,
                                                                   truncated[:, w])[:, 0])
