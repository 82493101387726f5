"""What a training step reads: the epoch's batch order, a batch of windows as tensors, and the
candidate items of a sampled step (sampled softmax over a large catalogue)."""
from __future__ import annotations

import heapq
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
    truncated: torch.Tensor | None = None  # [B, T] the data stops after step k, the session does not (None: nowhere)
    after: torch.Tensor | None = None      # [B] a_{t+T}, the logged action after the window (0 or None: none readable)
    shown: torch.Tensor | None = None      # [B, T, m] the slate step k was clicked in (0: padding), if read

    def __post_init__(self):
        self.truncated, self.after = nothing_cut(self.dones, self.truncated, self.after)

    @classmethod
    def from_windows(cls, w, device: torch.device | str = "cpu") -> "Batch":
        return cls(*tensors(w, ("state", "actions", "rewards", "dones", "valid", "truncated", "after"), device),
                   shown=shown_tensor(w, device))


def shown_tensor(w, device) -> torch.Tensor | None:
    """The slates of replay_buffer.Windows `w` as a tensor on `device`, or None if they were not read."""
    return None if w.shown is None else torch.from_numpy(w.shown).to(device, non_blocking=True)


def nothing_cut(dones: torch.Tensor, truncated, after) -> tuple[torch.Tensor, torch.Tensor]:
    """(truncated, after) with None read as "no truncation" and "no action after"."""
    return (torch.zeros_like(dones) if truncated is None else truncated,
            torch.zeros(len(dones), dtype=torch.long, device=dones.device) if after is None else after)


def tensors(w, names: tuple[str, ...], device) -> list[torch.Tensor]:
    """The arrays `names` of replay_buffer.Windows `w` as tensors on `device`."""
    return [torch.from_numpy(np.ascontiguousarray(getattr(w, f))).to(device, non_blocking=True) for f in names]


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


# ------------------------------------------------------------------------------------------------
# The session path (pool.state_len = 0): lanes read sessions chunk by chunk
# ------------------------------------------------------------------------------------------------
def lane_schedule(lengths: np.ndarray, lanes: int, chunk: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Which session each lane reads at each step, and from which of its events: GRU4Rec's
    session-parallel batches, `chunk` events per lane and step; a lane reads its sessions one after
    the other, each chunk after chunk in consecutive steps, carrying its state. A pure function of
    (seed, epoch), so a resumed run replays it.

    Sessions (of `lengths` [S] events; 0 = skipped) are dealt to lanes longest first, each to the
    least loaded lane, so that all lanes finish together: an epoch must not end with a few lanes
    reading the longest sessions alone (hundreds of steps on a handful of users undo what the epoch
    learnt). Each lane then reads its sessions in a random order.

    Returns (session [steps, lanes], start [steps, lanes]): session -1 is an idle lane.
    """
    rng = np.random.default_rng([seed, 200, epoch])
    lengths = np.asarray(lengths, dtype=np.int64)
    shuffled = rng.permutation(len(lengths))                     # random order among equal lengths
    order = shuffled[np.argsort(-lengths[shuffled], kind="stable")]
    order = order[lengths[order] > 0]
    chunks = -(-lengths[order] // chunk)                         # chunks of each session
    lane_of = np.zeros(len(order), dtype=np.int64)
    load = [(0, lane) for lane in range(lanes)]                  # (chunks dealt, lane): a heap
    for i, n in enumerate(chunks.tolist()):
        dealt, lane = heapq.heappop(load)
        lane_of[i] = lane
        heapq.heappush(load, (dealt + n, lane))
    # Lane by lane, its sessions in a random order, laid out back to back.
    key = np.lexsort((rng.random(len(order)), lane_of))
    order, chunks, lane_of = order[key], chunks[key], lane_of[key]
    ends = np.cumsum(chunks)
    lane_start = np.searchsorted(lane_of, np.arange(lanes))      # first session of each lane in `order`
    first_step = ends - chunks - np.concatenate([[0], ends])[lane_start][lane_of]
    steps = int(max(dealt for dealt, _ in load)) if len(order) else 0
    session = np.full((steps, lanes), -1, dtype=np.int64)
    start = np.zeros((steps, lanes), dtype=np.int64)
    k = np.repeat(np.arange(len(order)), chunks)                 # one row per (session, chunk)
    nth = np.arange(len(k)) - np.repeat(ends - chunks, chunks)
    session[first_step[k] + nth, lane_of[k]] = order[k]
    start[first_step[k] + nth, lane_of[k]] = nth * chunk
    return session, start


@dataclass
class Chunk:
    """One step of the session path: each lane's next events, as tensors on the training device.

    A lane trains the first `train_len` of its `width` = train_len + T - 1 events (the rest is the
    look-ahead of their T-step returns); `carry` is what the encoders carry into the chunk (online,
    target), and the loss leaves the carries after the trained events in `next_carry`.
    """
    items: torch.Tensor    # [B, W] a_p .. a_{p+W-1}, p the lane's start; 0 past the session's end
    rewards: torch.Tensor  # [B, W]
    dones: torch.Tensor    # [B, W] the session's last event
    valid: torch.Tensor    # [B, W] inside the session
    train_len: int
    carry: tuple
    next_carry: tuple | None = None
    truncated: torch.Tensor | None = None  # [B, W] the data stops after this event, the session does not
    after: torch.Tensor | None = None      # [B] the logged event after the chunk's W (0: none readable)
    shown: torch.Tensor | None = None      # [B, W, m] the slate each event was clicked in (0: padding), if read

    def __post_init__(self):
        self.truncated, self.after = nothing_cut(self.dones, self.truncated, self.after)

    @classmethod
    def from_spans(cls, w, train_len: int, carry: tuple, device: torch.device | str = "cpu") -> "Chunk":
        items, rewards, dones, valid, truncated, after = tensors(
            w, ("actions", "rewards", "dones", "valid", "truncated", "after"), device)
        return cls(items, rewards, dones, valid, train_len, carry, truncated=truncated, after=after,
                   shown=shown_tensor(w, device))
