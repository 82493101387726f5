"""Off-policy evaluation of slate policies from a logged impression log: pure functions over arrays.

The log holds S slates (every slate shown, clicked or not) of n sessions: `session` [S] (0 .. n-1),
`slates` [S, k] item ids in the logging policy's order, `log_cond_logp` [S, k] the logging policy's
log-probability of each position's item given the items above it (Plackett-Luce chain rule), `click_pos`
[S] the position clicked (-1 = none) and `reward` [S]. A target policy enters through the same kind of
arrays: its probability of each logged (item, position) pair, or of each logged prefix.

Every estimator returns per-session numerators and denominators, so that one function turns them into
an estimate (sum num / sum den) and one bootstraps its interval over sessions:

- item-position IPS (Li et al. 2018; obp's SlateIndependentIPS): the reward at position l weighted by
  pi(item at l) / mu(item at l); its self-normalised form divides by the mean weight;
- item IPS: the same with pi(item in the slate) / mu(item in the slate), for users who, like the
  simulator's, do not look at positions;
- reward-interaction IPS (McInerney et al. 2020; obp's SlateRewardInteractionIPS): the weight of
  position l is the ratio of the probabilities of the prefix 1..l;
- sequential: a session's rewards weighted by the running product of each step's clicked-position weight
  (per-decision importance sampling over the session), clipped; and its weighted form (Precup et al.
  2000), which divides each step's weighted rewards by that step's summed weights;
- direct method: a reward model's expected reward of the target's slates at the logged states, and its
  cascade doubly robust correction (Kiyohara et al. 2022) by the prefix-weighted residuals;
- fitted Q evaluation: a linear Q of the target policy at its TD fixed point (LSTDQ), read at s_0.
"""
from __future__ import annotations

import numpy as np

from seqrec.running.errors import UserError

TINY = np.finfo(float).tiny


# ================================================================================================
# Propensities
# ================================================================================================
def plackett_luce_log_probs(logits: np.ndarray, ordered: np.ndarray) -> np.ndarray:
    """log P(ordered[:, l] at position l | the items above it) when a slate is drawn from Plackett-Luce
    weights exp(logits): w_{i_l} / (sum of all w - sum_{m<l} w_{i_m}). logits [S, N], ordered [S, k] ->
    [S, k]; their sum over positions is the slate's log-probability, their cumulative sum its prefixes'."""
    weights = np.exp(logits - logits.max(1, keepdims=True))
    chosen = np.take_along_axis(weights, ordered, 1)                                    # [S, k]
    before = np.cumsum(chosen, 1) - chosen
    left = np.maximum(weights.sum(1, keepdims=True) - before, TINY)
    return np.log(np.maximum(chosen, TINY)) - np.log(left)


def ranked_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """A deterministic policy's slate, best first (ties to the lower item id). scores [S, N] -> [S, k]"""
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.lexsort((top, -np.take_along_axis(scores, top, 1)), axis=1)
    return np.take_along_axis(top, order, 1)


def deterministic_position_probs(target_slates: np.ndarray, slates: np.ndarray) -> np.ndarray:
    """pi(item at l) of a deterministic policy: 1 where it shows the logged item at the logged position.
    target_slates, slates [S, k] -> [S, k]"""
    return (target_slates == slates).astype(np.float64)


def deterministic_prefix_probs(target_slates: np.ndarray, slates: np.ndarray) -> np.ndarray:
    """pi(prefix 1..l) of a deterministic policy: 1 where its first l items are the logged ones, in order.
    [S, k], [S, k] -> [S, k]"""
    return np.cumprod(target_slates == slates, axis=1).astype(np.float64)


def deterministic_membership_probs(target_slates: np.ndarray, slates: np.ndarray) -> np.ndarray:
    """pi(item in the slate) of a deterministic policy: 1 where it shows the logged item anywhere.
    [S, k], [S, k] -> [S, k]"""
    return (slates[:, :, None] == target_slates[:, None, :]).any(2).astype(np.float64)


def position_marginals(logits: np.ndarray, slates: np.ndarray, draws: int, rng: np.random.Generator,
                       chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """P(slates[s, l] at position l) and P(slates[s, l] anywhere in the slate) under Plackett-Luce weights
    exp(logits[s]), by drawing `draws` slates per row with the Gumbel trick (the top k of logits + Gumbel
    noise is a Plackett-Luce draw). The logged slate counts as one more draw, (count + 1) / (draws + 1),
    so a logged pair never gets 0: a slightly biased but finite estimate. logits [S, N], slates [S, k] ->
    ([S, k], [S, k])"""
    S, k = slates.shape
    at, anywhere = np.zeros((S, k)), np.zeros((S, k))
    for start in range(0, S, chunk):
        rows = slice(start, min(start + chunk, S))
        for _ in range(draws):
            drawn = ranked_top_k(logits[rows] + rng.gumbel(size=logits[rows].shape), k)
            at[rows] += drawn == slates[rows]
            anywhere[rows] += deterministic_membership_probs(drawn, slates[rows])
    return (at + 1.0) / (draws + 1.0), (anywhere + 1.0) / (draws + 1.0)


# ================================================================================================
# Estimators: per-session numerators and denominators
# ================================================================================================
def position_rewards(click_pos: np.ndarray, reward: np.ndarray, k: int) -> np.ndarray:
    """The reward of each slate at the position clicked, 0 elsewhere. [S], [S] -> [S, k]"""
    out = np.zeros((len(click_pos), k))
    hit = click_pos >= 0
    out[np.flatnonzero(hit), click_pos[hit]] = reward[hit]
    return out


def per_session(values: np.ndarray, session: np.ndarray, n_sessions: int) -> np.ndarray:
    """Sum of `values` [S] within each session. -> [n_sessions]"""
    return np.bincount(session, weights=values, minlength=n_sessions)


def slate_ips(rewards: np.ndarray, weights: np.ndarray, session: np.ndarray, n_sessions: int,
              self_normalised: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """IPS over positions: the return of a session is sum over its slates and positions of w * r.
    rewards, weights [S, k] (item-position or prefix weights), session [S] -> (num, den) [n_sessions].
    Plain: den = 1 per session. Self-normalised: a weight's expectation under the logging policy is 1,
    so den is the session's weights summed over slates and averaged over positions, divided by the
    mean number of slates per session: sum num / sum den = slates per session * sum w r / mean w."""
    num = per_session((weights * rewards).sum(1), session, n_sessions)
    if not self_normalised:
        return num, np.ones(n_sessions)
    slates_per_session = len(session) / n_sessions
    return num, per_session(weights.mean(1), session, n_sessions) / slates_per_session


def per_decision_tables(rewards: np.ndarray, weights: np.ndarray, click_pos: np.ndarray, session: np.ndarray,
                        step: np.ndarray, n_sessions: int) -> tuple[np.ndarray, np.ndarray]:
    """Each session's running product of clicked-position weights and its reward, step by step: products,
    step_rewards [n_sessions, T]. A slate without a click has reward 0 and ends the session; after that the
    product stays at its last value with reward 0 (an absorbing state), so every session counts at every
    step. A product that overflowed to inf and then met a zero weight is 0. rewards, weights [S, k];
    click_pos, session, step [S]."""
    T = int(step.max(initial=0)) + 1
    clicked = click_pos >= 0
    w = np.where(clicked, weights[np.arange(len(session)), np.maximum(click_pos, 0)], 1.0)
    r = np.where(clicked, rewards[np.arange(len(session)), np.maximum(click_pos, 0)], 0.0)
    factors, step_rewards = np.ones((n_sessions, T)), np.zeros((n_sessions, T))
    factors[session, step], step_rewards[session, step] = w, r
    with np.errstate(over="ignore", invalid="ignore"):
        products = np.cumprod(factors, axis=1)
    return np.nan_to_num(products, nan=0.0, posinf=np.inf), step_rewards


def sequential_ips(products: np.ndarray, step_rewards: np.ndarray, clip: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-decision importance sampling over a session: the reward at step t weighted by the product of
    the clicked positions' weights at steps 0..t, each product clipped at `clip`. products, step_rewards
    [n, T] (per_decision_tables) -> (num, den = 1) [n] and the share of rewarded steps whose weight was
    clipped."""
    rewarded = step_rewards != 0
    clipped = float((rewarded & (products > clip)).sum() / max(rewarded.sum(), 1))
    return (np.minimum(products, clip) * step_rewards).sum(1), np.ones(len(products)), clipped


def weighted_per_decision(products: np.ndarray, step_rewards: np.ndarray) -> float:
    """Weighted per-decision importance sampling: sum over steps t of the weighted mean reward at t,
    sum_i rho_it r_it / sum_i rho_it (a step where every weight is 0 adds 0). [n, T], [n, T] -> float"""
    den = products.sum(0)
    return float(np.sum(np.where(den > 0, (products * step_rewards).sum(0) / np.where(den > 0, den, 1.0), 0.0)))


# ================================================================================================
# Reward models: the direct method, cascade doubly robust, fitted Q evaluation
# ================================================================================================
def fit_click_model(scores: np.ndarray, clicked: np.ndarray, iters: int = 50) -> np.ndarray:
    """P(click | item shown) = sigmoid(a * score + c), fitted by Newton's method on the log's shown
    (state, item) pairs: scores, clicked [m] (a critic's log-probability of the item, and whether the user
    clicked it) -> [a, c]. Scores of -inf (items the critic never saw) are left out of the fit."""
    keep = np.isfinite(scores)
    X = np.stack([scores[keep], np.ones(int(keep.sum()))], 1)
    y = clicked[keep].astype(np.float64)
    if len(y) == 0 or y.min() == y.max():
        raise UserError("the click model needs shown items both clicked and not clicked in the log")
    theta = np.array([0.0, np.log(y.mean() / (1 - y.mean()))])
    for _ in range(iters):
        p = click_probs(X[:, 0], theta)
        hessian = X.T @ (X * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, X.T @ (y - p))
        theta += step
        if np.abs(step).max() < 1e-10:
            break
    return theta


def click_probs(scores: np.ndarray, params: np.ndarray) -> np.ndarray:
    """The click model's P(click | shown) of any array of scores (-inf -> 0)."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-(params[0] * scores + params[1])))


def direct_method(expected: np.ndarray, session: np.ndarray, n_sessions: int) -> tuple[np.ndarray, np.ndarray]:
    """DM: a session's return is the sum over its logged states of the reward model's expected reward of
    the target's slate there. expected [S] -> (num, den = 1) [n_sessions]"""
    return per_session(expected, session, n_sessions), np.ones(n_sessions)


def cascade_dr(rewards: np.ndarray, q_logged: np.ndarray, q_target: np.ndarray, prefix_weights: np.ndarray,
               session: np.ndarray, n_sessions: int) -> tuple[np.ndarray, np.ndarray]:
    """Cascade doubly robust (Kiyohara et al. 2022): per slate, sum over positions l of
    w_1..l (r_l - q(a_l)) + w_1..l-1 E_pi[q(a'_l) | logged prefix 1..l-1], with w_1..0 = 1: the reward
    model's expectation corrected by the prefix-weighted residuals. rewards, q_logged (the reward model at
    the logged items), q_target (its expectation under the target given the logged prefix), prefix_weights
    [S, k], session [S] -> (num, den = 1) [n_sessions]"""
    before = np.concatenate([np.ones((len(rewards), 1)), prefix_weights[:, :-1]], axis=1)
    per_slate = (prefix_weights * (rewards - q_logged) + before * q_target).sum(1)
    return per_session(per_slate, session, n_sessions), np.ones(n_sessions)


def lstdq_terms(features: np.ndarray, next_features: np.ndarray, rewards: np.ndarray, gamma: float,
                session: np.ndarray, n_sessions: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each session's share of the LSTDQ system (below): A_i = F_i^T (F_i - gamma F'_i), b_i = F_i^T r_i and
    its number of transitions, so that a bootstrap over sessions only sums them. features [m, d] of the
    logged (s, a), next_features [m, d] the target's expected features at s' (0 where the session must
    end), rewards, session [m] -> ([n, d, d], [n, d], [n])"""
    d = features.shape[1]
    A, b = np.zeros((n_sessions, d, d)), np.zeros((n_sessions, d))
    np.add.at(A, session, features[:, :, None] * (features - gamma * next_features)[:, None, :])
    np.add.at(b, session, features * rewards[:, None])
    return A, b, np.bincount(session, minlength=n_sessions).astype(np.float64)


def lstdq(A: np.ndarray, b: np.ndarray, count: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """Fitted Q evaluation with a linear Q(s, a) = features @ theta, solved at its fixed point (LSTDQ,
    Lagoudakis & Parr 2003), which repeated regression onto r + gamma Q(s', pi) converges to:
    F^T (F - gamma F') theta = F^T r, from sessions' terms (lstdq_terms) [n, d, d], [n, d], [n] -> theta [d]"""
    m, d = max(count.sum(), 1.0), b.shape[1]
    theta = np.linalg.lstsq(A.sum(0) / m + ridge * np.eye(d), b.sum(0) / m, rcond=None)[0]
    if not np.all(np.isfinite(theta)):
        raise UserError("fitted Q evaluation diverged (non-finite weights): lower the discount or check the log")
    return theta


# ================================================================================================
# Estimates and intervals
# ================================================================================================
def estimate(num: np.ndarray, den: np.ndarray) -> float:
    """The estimate of per-session numerators and denominators: sum num / sum den."""
    total = den.sum()
    return float(num.sum() / total) if total > 0 else float("nan")


def bootstrap_interval(num: np.ndarray, den: np.ndarray, rng: np.random.Generator, resamples: int = 1000,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of `estimate` over `resamples` resamplings of the sessions with replacement."""
    n = len(num)
    picks = rng.integers(0, n, size=(resamples, n))
    nums, dens = num[picks].sum(1), den[picks].sum(1)
    values = np.where(dens > 0, nums / np.where(dens > 0, dens, 1.0), np.nan)
    lo, hi = np.nanquantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_statistic(statistic, n: int, rng: np.random.Generator, resamples: int = 1000,
                        level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of `statistic(rows)` (rows: session indices drawn with replacement) over
    `resamples` resamplings of n sessions, for estimates that are not a ratio of per-session sums."""
    values = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(resamples)])
    lo, hi = np.nanquantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


# ================================================================================================
# Checks
# ================================================================================================
def check_log_propensities(log_cond_logp: np.ndarray, where: str = "log") -> None:
    """The logging policy's conditional log-probabilities [S, k] must be finite and at most 0."""
    bad = ~np.isfinite(log_cond_logp) | (log_cond_logp > 1e-9)
    if bad.any():
        row = int(np.flatnonzero(bad.any(1))[0])
        raise UserError(f"{where}: slate {row} has logging log-probability {log_cond_logp[row][bad[row]][0]!r} "
                        f"(a propensity must be a finite log-probability, at most 0: a zero, missing or "
                        f"non-finite propensity cannot be weighted); fix or drop those slates")


def check_support(target_probs: np.ndarray, log_probs: np.ndarray, where: str = "target policy") -> None:
    """A target that puts mass where the logging policy put none cannot be evaluated by weighting."""
    bad = (target_probs > 0) & (log_probs <= 0)
    if bad.any():
        raise UserError(f"{where} puts probability on {int(bad.sum())} (item, position) pairs the logging "
                        f"policy never shows (support violation): importance weights would be infinite")
