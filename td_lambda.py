"""TD(lambda) returns over a window of T steps, as a pure function of [batch, time] tensors.

Conventions (as in torchrl's `td_lambda_return_estimate` and rlax's `lambda_returns`):
  rewards[:, k]     = r_{t+k}
  next_values[:, k] = V(s_{t+k+1}), the value of the state after step k
  dones[:, k]       = True where step k ends the session: nothing is bootstrapped past it
  truncated[:, k]   = True where the data stops after step k but the session goes on (leave-one-out's
                      last training event: held-out events follow). It is bootstrapped like the
                      window's end, G_k = r_k + gamma * V_{k+1}, with no lambda-blend past it.

Computed backwards, truncated at the window's end (the last step bootstraps from its next value):
  G_{T-1} = r_{T-1} + gamma * (1 - d_{T-1}) * V_T
  G_k     = r_k + gamma * (1 - d_k) * ((1 - lam) * V_{k+1} + lam * G_{k+1})
lam = 0 gives the one-step target r_k + gamma V_{k+1}; lam = 1 the (T-k)-step Monte-Carlo return
bootstrapped at the window's end (or at a truncation). Steps after a done or a truncation are left
as computed: callers mask them.
"""
from __future__ import annotations

import torch


def lambda_returns(rewards: torch.Tensor, next_values: torch.Tensor, dones: torch.Tensor,
                   gamma: float, lam: float, truncated: torch.Tensor | None = None) -> torch.Tensor:
    """lambda-return G_k for every step k of the window. All inputs [B, T]; returns [B, T]."""
    truncated = torch.zeros_like(dones) if truncated is None else truncated
    if not (rewards.shape == next_values.shape == dones.shape == truncated.shape) or rewards.dim() != 2:
        raise ValueError(f"rewards, next_values, dones and truncated must share a [B, T] shape, got "
                         f"{tuple(rewards.shape)}, {tuple(next_values.shape)}, {tuple(dones.shape)}, "
                         f"{tuple(truncated.shape)}")
    discount = gamma * (1.0 - dones.to(rewards.dtype))          # 0 where the session ends
    returns = torch.empty_like(rewards)
    next_return = next_values[:, -1]                             # G_T := V_T truncates the window
    for k in range(rewards.shape[1] - 1, -1, -1):
        blended = torch.where(truncated[:, k], next_values[:, k], (1.0 - lam) * next_values[:, k] + lam * next_return)
        next_return = rewards[:, k] + discount[:, k] * blended
        returns[:, k] = next_return
    return returns


def sliding_lambda_returns(rewards: torch.Tensor, next_values: torch.Tensor, dones: torch.Tensor,
                           gamma: float, lam: float, horizon: int, truncated: torch.Tensor | None = None) -> torch.Tensor:
    """G^lambda_0 of the `horizon`-step window from each position of a stretch of a session.

    rewards, next_values (V after each step), dones, truncated: [B, W] for consecutive steps p .. p+W-1 ->
    [B, W - horizon + 1]: entry j is the lambda-return of steps j .. j+horizon-1, truncated there as
    `lambda_returns` truncates a window (the session path's TD target, one per transition).
    """
    win = torch.arange(rewards.shape[1] - horizon + 1, device=rewards.device)[:, None] + torch.arange(
        horizon, device=rewards.device)                                                  # [W-T+1, T]
    B, J = rewards.shape[0], win.shape[0]
    truncated = torch.zeros_like(dones) if truncated is None else truncated
    r, v, d, tr = (x[:, win].flatten(0, 1) for x in (rewards, next_values, dones, truncated))  # [B*J, T] each
    return lambda_returns(r, v, d, gamma, lam, tr)[:, 0].view(B, J)


def td_targets(rewards: torch.Tensor, next_values: torch.Tensor, dones: torch.Tensor, gamma: float, lam: float,
               truncated: torch.Tensor | None = None, horizon: int | None = None) -> torch.Tensor:
    """The TD target of each trained step: rewards, next_values (V after each step), dones, truncated
    [B, W] -> [B, C]. With `horizon` None (a window) every step k's lambda-return runs to the window's
    end (C = W); with a horizon T (a session chunk) each of the first C = W - T + 1 steps gets the
    lambda-return of the T steps from it."""
    if horizon is None:
        return lambda_returns(rewards, next_values, dones, gamma, lam, truncated)
    return sliding_lambda_returns(rewards, next_values, dones, gamma, lam, horizon, truncated)
