"""What a training step reads: the epoch's batch order, a batch of windows as tensors, and the
candidate items of a sampled step (sampled softmax over a large catalogue)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def epoch_order(num_events: int, seed: int, epoch: int) -> np.ndarray:
    """The batch order of an epoch: a pure function of (seed, epoch), so a resumed run replays it. [n]"""
    return np.random.default_rng([seed, 100, epoch]).permutation(num_events)


@dataclass
class Batch:
    """B samples of T-step windows (replay_buffer.Windows) as tensors on the training device."""
    state: torch.Tensor    # [B, L] items before the event
    actions: torch.Tensor  # [B, T] a_t .. a_{t+T-1}
    rewards: torch.Tensor  # [B, T]
    dones: torch.Tensor    # [B, T] step k ends the session
    valid: torch.Tensor    # [B, T] step k lies inside the session

    @classmethod
    def from_windows(cls, w, device: torch.device | str = "cpu") -> "Batch":
        return cls(*(torch.from_numpy(np.ascontiguousarray(getattr(w, f))).to(device, non_blocking=True)
                     for f in ("state", "actions", "rewards", "dones", "valid")))


def candidate_items(actions: torch.Tensor, negatives: int, num_items: int, seed: int, step: int) -> torch.Tensor:
    """The items a sampled step scores: every item acted on in the batch plus `negatives` uniform
    draws, sorted and unique, padding excluded. [C]

    Drawn from a generator seeded by (seed, step): the same on every rank and after a resume, and
    apart from the dropout stream.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    drawn = torch.randint(1, num_items + 1, (negatives,), generator=g).to(actions.device)
    both = torch.cat([actions.flatten(), drawn]).unique()
    return both[both > 0]


def candidate_log_inclusion(item_counts: np.ndarray, actions_per_step: int, negatives: int) -> torch.Tensor:
    """log P(item i is among a step's candidates) [N+1], from training counts [N+1] (index 0 unused).

    i is a candidate if one of the batch's `actions_per_step` actions is i (each drawn at i's training
    frequency f_i, as batches are) or one of the `negatives` uniform draws is:
    P = 1 - (1 - f_i)^actions_per_step * (1 - 1/N)^negatives. Subtracting it from the candidates'
    logits is the logQ correction of sampled softmax: without it, frequent items (nearly always
    candidates, so nearly always pushed down as negatives) are under-ranked.
    """
    counts = np.asarray(item_counts, dtype=np.float64)
    freq = counts / max(counts.sum(), 1.0)
    miss = (1.0 - freq) ** actions_per_step * (1.0 - 1.0 / (len(counts) - 1)) ** negatives
    return torch.from_numpy(np.log1p(-miss)).float()
