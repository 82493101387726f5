"""The Q head's loss terms, one function each: what the TD target bootstraps from, the sampled
negatives and CQL's penalty, IQL's value expectile and SA2C's advantages. model.compute_losses sums
them with the self-supervised loss (ssl_heads.py) and the TD loss against td_lambda.td_targets.

`net` is the online network and `target_net` the target network (model.SeqRecQ, or anything with
its q_of / greedy_items / max_q / q_values / scores / state_value); states are the encoders' outputs
[n, H]. Item 0 is padding; draws are from items 1..N.
"""
from __future__ import annotations

import torch

from seqrec.running.distributed import Dist


# ------------------------------------------------------------------------------------------------
# What the TD target bootstraps from: V(s') by train.bootstrap
# ------------------------------------------------------------------------------------------------
def bootstrap_values(net, target_net, states: torch.Tensor, target_states: torch.Tensor, logged: torch.Tensor,
                     kind: str, candidates: torch.Tensor | None = None,
                     follows_truncation: torch.Tensor | None = None) -> torch.Tensor:
    """V(s) of n states, from the online and target nets' states [n, H] -> [n], by `kind`:

    `double` (and `swap`) = the target's Q at the online argmax (only that item is scored by the
    target); `max` = the target's max; both over items 1..N or over `candidates` [C]. `logged` (SARSA,
    policy evaluation) = the target's Q of the action the log took from s, `logged` [n] (0: none);
    where the data was cut just before s (`follows_truncation` [n]: held-out events follow, so the
    next action is unknown) it is the expectation of the target's Q under the next-item head's policy.
    `expectile` (IQL) = the online value head's V(s): no maximum, no action outside the log.
    """
    if kind == "expectile":
        return net.state_value(states)
    if kind == "max":
        return target_net.max_q(target_states, candidates)
    if kind != "logged":
        return target_net.q_of(target_states, net.greedy_items(states, candidates))
    values = torch.where(logged > 0, target_net.q_of(target_states, logged), torch.zeros((), device=logged.device))
    cut = (logged == 0) & follows_truncation if follows_truncation is not None else None
    if cut is not None and cut.any():
        values[cut] = policy_value(net, target_net, states[cut], target_states[cut])
    return values


def policy_value(net, target_net, states: torch.Tensor, target_states: torch.Tensor) -> torch.Tensor:
    """sum_a pi(a | s) Q_target(s, a), pi the online next-item head's softmax over items 1..N: [n, H] -> [n]."""
    pi = torch.softmax(net.scores(states, "ssl")[:, 1:], -1)
    return (pi * target_net.q_values(target_states)[:, 1:]).sum(-1)


# ------------------------------------------------------------------------------------------------
# IQL: the state value as an upper expectile of Q over the logged actions
# ------------------------------------------------------------------------------------------------
def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """IQL's asymmetric square |tau - 1(diff < 0)| * diff^2, elementwise; diff = target - prediction.
    tau 0.5 is half the squared error (the mean); tau -> 1 approaches the maximum of the targets."""
    return torch.where(diff < 0, 1.0 - tau, tau) * diff.square()


def value_expectile_loss(net, target_net, states: torch.Tensor, target_states: torch.Tensor, items: torch.Tensor,
                         weight: torch.Tensor, tau: float, count: torch.Tensor) -> torch.Tensor:
    """IQL's value loss: V(s_j) [B, C] from the online value head against the target's Q(s_j, a_j) of
    the logged items [B, C], the expectile loss summed over `weight` [B, C] (1: trained) / `count`."""
    with torch.no_grad():
        q_logged = target_net.q_of(target_states, items)                                       # [B, C]
    return (expectile_loss(q_logged - net.state_value(states), tau) * weight).sum() / count


# ------------------------------------------------------------------------------------------------
# SNQN's negatives and CQL's penalty
# ------------------------------------------------------------------------------------------------
def sampled_items(shape: tuple[int, ...], num_items: int, seed: int, step: int, device, stream: int = 0) -> torch.Tensor:
    """Items drawn uniformly from 1..N, of `shape`, from a generator seeded by (seed, step, stream): the
    same after a resume, apart from the dropout stream. Drawn for the global batch, so each rank of a
    distributed run takes the rows one process would."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + step) * 131 + 7_777_777 + 1_000_000_007 * stream)
    return torch.randint(1, num_items + 1, shape, generator=g).to(device)


def negative_items(n: int, uniform: int, shown: torch.Tensor | None, num_items: int, seed: int, step: int,
                   dist: Dist, device) -> torch.Tensor:
    """The negatives of n trained states: `uniform` draws each [n, uniform], or the logged slate's items
    `shown` [n, m] (shown and not clicked: true negatives) with draws filling a slate that has fewer
    [n, m]. Draws follow the global order of trained states, so ranks split what one process draws."""
    width = uniform if shown is None else shown.shape[-1]
    before, total = dist.offset(n)                            # rows on the ranks before this one
    drawn = sampled_items((total, width), num_items, seed, step, device)[before:before + n]
    return drawn if shown is None else torch.where(shown > 0, shown, drawn)


def negative_losses(net, states: torch.Tensor, taken: torch.Tensor, q_taken: torch.Tensor,
                    values: torch.Tensor, drawn: torch.Tensor, train, td_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """SNQN's negatives and the CQL penalty for n trained states [n, H] with taken items [n] and their
    Q(s, taken) [n] (the TD loss's, with gradients), the states' own values V(s) [n] (detached) and
    `drawn` [n, m] negative items per state: each pulled towards r_negative + gamma V(s) (the user
    did not move). Returns per-state (TD loss [n], CQL penalty [n]): the mean TD loss over the state's
    draws other than the taken item, and logsumexp(Q over draws + taken) - Q(taken)."""
    q_neg = net.q_of(states[:, None, :], drawn, fixed_level=True)         # [n, m]; dueling: they move A only
    other = (drawn != taken[:, None]).to(q_neg.dtype)
    target = (train.reward_negative + train.gamma * values)[:, None].expand_as(q_neg)
    td = (td_fn(q_neg, target, reduction="none") * other).sum(1) / other.sum(1).clamp(min=1.0)
    both = torch.cat([q_taken[:, None], q_neg.masked_fill(other == 0, float("-inf"))], 1)
    return td, torch.logsumexp(both, 1) - q_taken


# ------------------------------------------------------------------------------------------------
# SA2C: the self-supervised loss weighed by the advantage
# ------------------------------------------------------------------------------------------------
def advantages(net, states: torch.Tensor, items: torch.Tensor, q_taken: torch.Tensor,
               valid: torch.Tensor, train, dist: Dist, step: int) -> torch.Tensor:
    """SA2C's advantage of every valid step: A(s_j, a_j) = Q(s_j, a_j) - the mean of Q over {a_j} and
    train.q_negatives uniform draws, detached, clipped to [0, train.advantage_clip]; 0 elsewhere.
    states [B, W, H] (the state before each action), items, q_taken [B, W], valid [B, W] -> [B, W]."""
    n = int(valid.sum())
    before, total = dist.offset(n)
    drawn = sampled_items((total, train.q_negatives), net.num_items, train.seed, step, valid.device,
                          stream=1)[before:before + n]
    with torch.no_grad():
        q_pos = q_taken[valid]
        q_neg = net.q_of(states[valid][:, None, :], drawn)                                     # [n, m]
        mean = (q_pos + q_neg.sum(1)) / (1 + train.q_negatives)
        out = torch.zeros_like(q_taken)
        out[valid] = (q_pos - mean).clamp(0.0, train.advantage_clip)
    return out
