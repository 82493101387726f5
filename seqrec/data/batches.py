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


def ahead(count: int, steps: int, device=None) -> torch.Tensor:
    """Index [count, steps] of the `steps` positions from each of positions 0..count-1: row j is
    j, j+1, ..., j+steps-1. Turns per-session arrays [B, W] into windows [B, count, steps]."""
    return torch.arange(count, device=device)[:, None] + torch.arange(steps, device=device)


@dataclass(kw_only=True)
class Steps:
    """What both data paths hand the loss: each row's consecutive logged steps, as tensors on the
    training device. Step j of row b is the action items[b, j] taken from the state before it, its
    reward, and whether it ends the session. The first `trained.shape[1]` steps are trained (the TD
    loss of each valid one); the rest only extend their returns."""
    items: torch.Tensor    # [B, W] the logged actions a_p .. a_{p+W-1}; 0 past the session's end
    rewards: torch.Tensor  # [B, W]
    dones: torch.Tensor    # [B, W] step j ends the session
    valid: torch.Tensor    # [B, W] step j lies inside the session
    truncated: torch.Tensor | None = None  # [B, W] the data stops after step j, the session does not (None: nowhere)
    after: torch.Tensor | None = None      # [B] the logged action after the W steps (0 or None: none readable)
    shown: torch.Tensor | None = None      # [B, W, m] the slate step j was clicked in (0: padding), if read

    def __post_init__(self):
        self.truncated, self.after = nothing_cut(self.dones, self.truncated, self.after)

    def ssl_windows(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """x [B, W] -> [n, steps]: for each of the n self-supervised states (ssl_from, row-major) the
        entries of its `steps` steps."""
        return x[:, ahead(self.ssl_from.shape[1], steps, x.device)][self.ssl_from]


@dataclass(kw_only=True)
class Batch(Steps):
    """The window path (pool.state_len > 0): B samples of T-step windows (replay_buffer.Windows). Every
    step of a window is trained against its lambda-return truncated at the window's end; the K
    self-supervised heads read the window's first state only."""
    history: torch.Tensor  # [B, L] the items before the window (left-padded)
    carry = None           # no encoder state is carried between batches
    horizon = None         # each step's return runs to the window's end

    @property
    def trained(self) -> torch.Tensor:
        """[B, T] the steps trained by TD: all of the window's valid ones."""
        return self.valid

    @property
    def ssl_from(self) -> torch.Tensor:
        """[B, 1] the states the self-supervised heads are trained from: the window's first."""
        return self.valid[:, :1]

    @classmethod
    def from_windows(cls, w, device: torch.device | str = "cpu") -> "Batch":
        history, items, rewards, dones, valid, truncated, after = tensors(
            w, ("state", "actions", "rewards", "dones", "valid", "truncated", "after"), device)
        return cls(history=history, items=items, rewards=rewards, dones=dones, valid=valid, truncated=truncated,
                   after=after, shown=shown_tensor(w, device))


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


@dataclass(kw_only=True)
class Chunk(Steps):
    """The session path (pool.state_len = 0): each lane's next W = train_len + T - 1 events. A lane
    trains the first `train_len` (each against the lambda-return of the `horizon` = T steps from it,
    so every transition is trained once per epoch; the rest is their look-ahead) and every one of
    them feeds the self-supervised heads. `carry` is what the encoders (online, target) carry into the
    chunk; the loss returns what they carry out."""
    train_len: int
    carry: tuple
    history = None         # the state before the chunk is in the carry

    @property
    def horizon(self) -> int:
        return self.items.shape[1] - self.train_len + 1

    @property
    def trained(self) -> torch.Tensor:
        """[B, train_len] the trained events: padding past a session's end costs nothing."""
        return self.valid[:, :self.train_len]

    @property
    def ssl_from(self) -> torch.Tensor:
        return self.trained

    @classmethod
    def from_spans(cls, w, train_len: int, carry: tuple, device: torch.device | str = "cpu") -> "Chunk":
        items, rewards, dones, valid, truncated, after = tensors(
            w, ("actions", "rewards", "dones", "valid", "truncated", "after"), device)
        return cls(items=items, rewards=rewards, dones=dones, valid=valid, train_len=train_len, carry=carry,
                   truncated=truncated, after=after, shown=shown_tensor(w, device))
