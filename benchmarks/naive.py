"""The naive way to train the same model, kept only as the benchmark's point of comparison.

What reference SQN-style code does: a replay table with one row per sample holding its state and
next actions as lists (memory events x (L + T)), batches drawn from it row by row through pandas,
every state s_t .. s_{t+T} encoded by its own GRU pass over its last L items, and Q over all items
computed with gradients for the taken actions. Same losses, same model, same numbers of parameters.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from ssl_heads import multi_step_loss
from td_lambda import lambda_returns


def replay_table(pool, events: np.ndarray, state_len: int, horizon: int) -> pd.DataFrame:
    """One row per sample, lists inside: what the flat pool exists to avoid."""
    w = pool.windows(events, state_len, horizon, training=True)
    return pd.DataFrame({"state": list(w.state), "actions": list(w.actions), "rewards": list(w.rewards),
                         "dones": list(w.dones), "valid": list(w.valid)})


def sample_rows(table: pd.DataFrame, batch_size: int, rng: np.random.Generator) -> dict:
    """A batch, row by row, through pandas (`sample(...).to_dict()`, as the reference code does)."""
    rows = table.sample(n=batch_size, random_state=int(rng.integers(2 ** 31))).to_dict()
    return {k: torch.as_tensor(np.stack(list(v.values()))) for k, v in rows.items()}


def naive_losses(model, target_net, b: dict, t) -> torch.Tensor:
    L = b["state"].shape[1]
    window = torch.cat([b["state"], b["actions"]], 1)
    T = b["actions"].shape[1]
    states = torch.stack([model.last_state(window[:, k:k + L]) for k in range(T + 1)], 1)   # T+1 passes
    K = model.ssl.steps
    logits = model.ssl(states[:, 0])                                                     # [B, K, N+1] written out
    per_sample = F.cross_entropy(logits.flatten(0, 1), b["actions"][:, :K].flatten(), reduction="none")
    ce = multi_step_loss(per_sample.view(-1, K), b["valid"][:, :K],
                         torch.tensor(t.ssl_weights[:K], dtype=states.dtype, device=states.device))
    q = model.q_values(states)                                                           # all items, with grad
    q_taken = q[:, :-1].gather(-1, b["actions"].unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        target_states = torch.stack([target_net.last_state(window[:, k:k + L]) for k in range(1, T + 1)], 1)
        target_q = target_net.q_values(target_states)
        best = q[:, 1:, 1:].argmax(-1, keepdim=True) + 1
        next_v = target_q.gather(-1, best).squeeze(-1)
        returns = lambda_returns(b["rewards"], next_v, b["dones"], t.gamma, t.lam)
    valid = b["valid"].float()
    td = (F.mse_loss(q_taken, returns, reduction="none") * valid).sum() / valid.sum().clamp(min=1.0)
    return ce + t.alpha * td
