"""Google RecSim's interest-evolution world (Ie et al. 2019, the SlateQ testbed) with a fixed catalogue.

What is RecSim's own, unchanged: the catalogue and the users are drawn by its samplers
(`UtilityModelVideoSampler`, `UtilityModelUserSampler`), and every constant of the user model is read
off a user it samples. What is re-expressed here: its step (`IEvUserModel.simulate_response` and
`update_state`, the proportional choice model, watch time as the reward), in NumPy over many users at
once; tests/test_recsim.py drives both with the same random draws and gets the same sessions.

The model, as RecSim has it: an item (a video) has a topic (one of 20, uniform) and a quality
N(mean of its topic, 0.1), the topics' means spread over [-3, 3] (14 of the 20 below 0); every video
is 4 minutes long. A user has an interest in each topic, uniform in [-1, 1], and a time budget (200
minutes). Shown a slate, the user picks item j with probability proportional to interest(topic_j) + 1,
or nothing with weight no_click_mass + 1. A click earns its watch time (the reward), spends it from the
budget and gives back user_update_alpha * watch time * quality, so a click costs 4 - 1.06 * quality
minutes: good videos lengthen the session, and that effect shows only when the budget runs out, 50 to
250 steps later. A click also moves the interest in its topic a step towards or away from 1. A slate
with no click costs 0.5 minutes. The session ends when the budget is spent.

Changed from the stock environment: the catalogue is sampled once and every step's candidates are all
of it (RecSim draws fresh documents each step; an item-id model needs items that persist). Random
draws: RecSim's users draw from NumPy's global state; here each user draws from a counter-based stream
keyed by (world seed, the user, the step), so worlds in one process are independent, a run is a pure
function of its config, and every policy meets the same draws for the same user (common random numbers).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, fields, replace

import numpy as np
import pandas as pd

from seqrec.running.errors import UserError
from seqrec.evaluation.ope import plackett_luce_log_probs, ranked_top_k
from seqrec.worlds.simulator import NO_CLICK, StepResult, UserRows, run_sessions, seeing, top_k_slates


def stock_interest_evolution():
    """RecSim's interest_evolution module. RecSim imports `gym` only for `gym.Env` and `gym.spaces`,
    which `gymnasium` provides unchanged; the alias keeps gym's import-time notice off the output."""
    if "gym" not in sys.modules:
        import gymnasium
        sys.modules["gym"], sys.modules["gym.spaces"] = gymnasium, gymnasium.spaces
    try:
        from recsim.environments import interest_evolution
    except ImportError as e:
        raise UserError(f"data.source recsim needs RecSim ({e}); install it: pip install -r requirements.txt") from None
    return interest_evolution


@dataclass(frozen=True)
class RecSimParams:
    """The `recsim` section of config.yaml, where every default and its meaning live."""
    seed: int
    num_sessions: int
    num_items: int
    slate_size: int
    time_budget: float
    no_click_mass: float
    logging_temperature: float
    logging_noise: float
    max_session_len: int = 0     # not a key: the step cap the budget implies (RecSimWorld sets it)

    @classmethod
    def from_dict(cls, d: dict) -> "RecSimParams":
        names = {f.name for f in fields(cls)} - {"max_session_len"}
        if set(d) != names:
            raise UserError(f"the recsim section must hold exactly {', '.join(sorted(names))}")
        p = cls(**d)
        if p.num_items < p.slate_size or p.slate_size < 1:
            raise UserError(f"recsim.num_items ({p.num_items}) must be at least recsim.slate_size ({p.slate_size}) >= 1")
        if p.time_budget <= 0 or p.no_click_mass < -1 or p.logging_temperature <= 0 or p.logging_noise < 0:
            raise UserError("recsim: time_budget and logging_temperature must be > 0, no_click_mass >= -1, "
                            "logging_noise >= 0")
        return p


@dataclass
class RecSimUsers(UserRows):
    """A batch of B users in their sessions (20 topics)."""
    interests: np.ndarray    # [B, 20] interest per topic, in [-1, 1]
    budget: np.ndarray       # [B] minutes left
    key: np.ndarray          # [B] uint64: the user's own stream of random draws
    steps: np.ndarray        # [B] slates seen so far (the draws' counter)
    length: np.ndarray       # [B] clicks so far
    last_click: np.ndarray   # [B] item of the last click, NO_CLICK before the first
    done: np.ndarray         # [B] bool, session over


# Streams of uniform draws, counter-based: splitmix64 of (key, step, stream). [B] each.
_GOLDEN, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def keyed_uniforms(key: np.ndarray, step: np.ndarray, stream: int) -> np.ndarray:
    """Uniform [0, 1) draws that depend only on (key, step, stream), elementwise. [B]"""
    with np.errstate(over="ignore"):
        x = _splitmix64(key ^ _splitmix64(step.astype(np.uint64) * np.uint64(4) + np.uint64(stream)))
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class RecSimWorld:
    """Interest evolution with a fixed catalogue; the same step interface as seqrec.worlds.simulator.Simulator
    (`start_sessions`, `step`, `p.num_items`, `p.slate_size`, `p.max_session_len`), so rollouts, the
    log and online evaluation run on either."""

    # the reference policy whose return online_eval.py divides by
    ORACLE = "budget-oracle"

    def __init__(self, params: RecSimParams):
        ie = stock_interest_evolution()
        self.p = params
        sampler = ie.UtilityModelVideoSampler(doc_ctor=ie.IEvVideo, seed=params.seed)
        docs = [sampler.sample_document() for _ in range(params.num_items)]
        self.topic = np.array([d.cluster_id for d in docs], dtype=np.int64)           # [N]
        self.quality = np.array([d.quality for d in docs], dtype=np.float64)          # [N]
        self.length = np.array([d.video_length for d in docs], dtype=np.float64)      # [N]
        self._user_sampler = ie.UtilityModelUserSampler
        self._user_ctor = ie.IEvUserState
        stock = self._sample_stock_users(1, 0)[0]      # the user model's constants, as RecSim sets them
        self.step_penalty = float(stock.step_penalty)
        self.update_alpha = float(stock.user_update_alpha)
        self.min_normalizer = float(stock.choice_features["min_normalizer"])
        self.document_quality_factor = float(stock.document_quality_factor)
        self.user_quality_factor = float(stock.user_quality_factor)
        self.no_click_weight = params.no_click_mass - self.min_normalizer
        # No session runs longer than its budget allows: each step spends at least the cheaper of a
        # slate with no click and the cheapest click.
        cheapest = min(self.step_penalty, float(self.click_cost(self.length, np.arange(params.num_items)).min()))
        if cheapest <= 0:
            raise UserError("recsim: some click gives back more time than it takes, so sessions never end")
        self.p = replace(params, max_session_len=int(math.ceil(params.time_budget / cheapest)) + 1)

    @classmethod
    def from_config(cls, cfg) -> "RecSimWorld":
        return cls(RecSimParams.from_dict(cfg.recsim.to_dict()))

    # ---------------------------------------------------------------- users and their choices
    def _sample_stock_users(self, n: int, seed: int) -> list:
        sampler = self._user_sampler(user_ctor=self._user_ctor, no_click_mass=self.p.no_click_mass, seed=seed)
        return [sampler.sample_user() for _ in range(n)]

    def start_sessions(self, n: int, rng: np.random.Generator) -> RecSimUsers:
        """n fresh users from RecSim's user sampler (seeded from `rng`), each with its own draws."""
        stock = self._sample_stock_users(n, int(rng.integers(2 ** 31 - 1)))
        interests = np.array([u.user_interests for u in stock], dtype=np.float64).reshape(n, -1)
        return self.users_from(interests, rng.integers(0, 2 ** 63, size=n, dtype=np.uint64))

    def users_from(self, interests: np.ndarray, key: np.ndarray) -> RecSimUsers:
        """Users at the start of a session with these interests [B, 20] and draw keys [B]."""
        B = len(interests)
        return RecSimUsers(interests=np.array(interests, dtype=np.float64), budget=np.full(B, float(self.p.time_budget)),
                           key=np.asarray(key, dtype=np.uint64), steps=np.zeros(B, dtype=np.int64),
                           length=np.zeros(B, dtype=np.int64), last_click=np.full(B, NO_CLICK),
                           done=np.zeros(B, dtype=bool))

    def choice_weights(self, users: RecSimUsers, items: np.ndarray | None = None) -> np.ndarray:
        """The proportional choice model's weight of each item, interest(topic) - min_normalizer:
        [B, N], or [B, k] for `items` [B, k]. Nothing is chosen with weight `no_click_weight`."""
        if items is None:
            return users.interests[:, self.topic] - self.min_normalizer
        return np.take_along_axis(users.interests, self.topic[items], 1) - self.min_normalizer

    def watch_time(self, users: RecSimUsers, items: np.ndarray) -> np.ndarray:
        """Minutes watched on a click: the video's length, or what is left of the budget. [B, ...]"""
        budget = users.budget.reshape((-1,) + (1,) * (np.ndim(items) - 1))
        return np.minimum(budget, self.length[items])

    def click_cost(self, watched: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Budget a click spends: the time watched less what the video's quality gives back (any shape)."""
        return watched - self.update_alpha * watched * self.document_quality_factor * self.quality[items]

    def step(self, users: RecSimUsers, slates: np.ndarray, rng=None) -> StepResult:
        """Show `slates` [B, k] (item indices); users who are done ignore it. The draws are the users' own
        (`rng` is not used)."""
        u_choice = keyed_uniforms(users.key, users.steps, 0)
        u_flip = keyed_uniforms(users.key, users.steps, 1)
        return self.respond(users, slates, u_choice, u_flip)

    def respond(self, users: RecSimUsers, slates: np.ndarray, u_choice: np.ndarray, u_flip: np.ndarray) -> StepResult:
        """IEvUserModel.simulate_response then update_state, for every user at once, with the uniform
        draws given: `u_choice` [B] picks the item as np.random.choice does, `u_flip` [B] the direction of
        the interest's step (np.random.rand in RecSim). `users` is updated in place."""
        B, k = slates.shape
        weights = np.concatenate([self.choice_weights(users, slates), np.full((B, 1), self.no_click_weight)], 1)
        probs = weights / weights.sum(1, keepdims=True)
        cdf = probs.cumsum(1)
        cdf /= cdf[:, -1:]
        choice = (cdf <= u_choice[:, None]).sum(1)                          # searchsorted(cdf, u, 'right')
        clicked = (choice < k) & ~users.done
        rows = np.flatnonzero(clicked)
        click = np.where(clicked, slates[np.arange(B), np.minimum(choice, k - 1)], NO_CLICK)

        items = click[rows]
        topic = self.topic[items]
        interest = users.interests[rows, topic]
        alpha = -0.3 / 1.0 * np.abs(interest) + 0.3                       # RecSim's compute_alpha(x, 1.0, 0.3)
        update = alpha * 1.0 * (1.0 - interest)
        towards = u_flip[rows] < (interest + 1.0) / 2
        users.interests[rows, topic] = np.clip(np.where(towards, interest + update, interest - update), -1.0, 1.0)

        watched = np.zeros(B)
        watched[rows] = np.minimum(users.budget[rows], self.length[items])
        expected_utility = interest - self.min_normalizer                  # RecSim scores it before the update
        received = self.user_quality_factor * expected_utility + self.document_quality_factor * self.quality[items]
        budget = users.budget.copy()
        budget[rows] = budget[rows] - watched[rows] + self.update_alpha * watched[rows] * received
        idle = ~clicked & ~users.done
        budget[idle] -= self.step_penalty
        users.budget = np.where(users.done, users.budget, budget)
        users.steps = users.steps + ~users.done
        users.length = users.length + clicked
        users.last_click = np.where(clicked, click, users.last_click)
        ends = ~users.done & (users.budget <= 0)
        users.done = users.done | ends
        return StepResult(click=click, purchase=np.zeros(B, dtype=bool), reward=watched, done=ends)

    # ---------------------------------------------------------------- policies that see the user
    def _ratio_slates(self, gain: np.ndarray, cost: np.ndarray, base: float, iterations: int = 50) -> np.ndarray:
        """Scores whose top k is the slate maximising sum(w gain) / (base + sum(w cost)) over slates of k
        (w the choice weights, folded into gain and cost [B, N]), by Dinkelbach's iteration: the best
        slate at ratio r is the top k of gain - r cost; r <- its ratio; stops when r no longer grows."""
        k = self.p.slate_size
        ratio = np.zeros(len(gain))
        for _ in range(iterations):
            scores = gain - ratio[:, None] * cost
            top = top_k_slates(scores, k)
            new = (np.take_along_axis(gain, top, 1).sum(1)
                   / (base + np.take_along_axis(cost, top, 1).sum(1)))
            if np.all(new <= ratio + 1e-12):
                break
            ratio = np.maximum(ratio, new)
        return gain - ratio[:, None] * cost

    def myopic_scores(self, users: RecSimUsers) -> np.ndarray:
        """Myopic oracle: the slate of highest expected watch time now, sum_j w_j t_j / (w_0 + sum_j w_j). [B, N]"""
        w = self.choice_weights(users)
        return self._ratio_slates(w * self.watch_time(users, np.arange(self.p.num_items)[None, :]), w, self.no_click_weight)

    def budget_scores(self, users: RecSimUsers) -> np.ndarray:
        """Budget-aware oracle: the slate of highest expected watch time per minute of budget it spends,
        sum_j w_j t_j / (w_0 penalty + sum_j w_j cost_j). [B, N]"""
        w = self.choice_weights(users)
        watched = self.watch_time(users, np.arange(self.p.num_items)[None, :])
        cost = self.click_cost(watched, np.arange(self.p.num_items)[None, :])
        return self._ratio_slates(w * watched, w * cost, self.no_click_weight * self.step_penalty)

    # ---------------------------------------------------------------- the logging policy
    def logging_logits(self, users: RecSimUsers, noise: np.ndarray) -> np.ndarray:
        """The logging policy's Plackett-Luce logits: (interest in the item's topic + noise) / temperature.
        It reads the user's interests through `noise` [B, N] (fixed for a session) and never the quality. [B, N]"""
        return (users.interests[:, self.topic] + noise) / self.p.logging_temperature

    def logging_slates(self, users: RecSimUsers, noise: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A Plackett-Luce draw of the logging policy (the top k of logits + Gumbel noise), best first, and
        each position's exact log-probability given the items above it. ([B, k], [B, k])"""
        logits = self.logging_logits(users, noise)
        ordered = ranked_top_k(logits + rng.gumbel(size=logits.shape), self.p.slate_size)
        return ordered, plackett_luce_log_probs(logits, ordered)

    def reference_policies(self, seed: int = 0) -> dict:
        """The policies that see the hidden user, by name: the myopic and the budget-aware oracle."""
        return {"myopic-oracle": seeing(lambda h, users: self.myopic_scores(users)),
                "budget-oracle": seeing(lambda h, users: self.budget_scores(users))}

    def session_noise(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """The logging policy's error about each of n users' interests, fixed for a session. [n, N]"""
        return rng.normal(0.0, self.p.logging_noise, size=(n, self.p.num_items))

    def generate_log(self, num_sessions: int | None = None, chunk: int = 1024, progress=None) -> pd.DataFrame:
        """Sessions under the logging policy, as an event log: session_id, item_id, timestamp (seconds),
        reward (minutes watched), shown_0 .. shown_{k-1} (the slate of the click's step, in the order the
        policy drew it) and slate_logp (that ordered slate's exact Plackett-Luce log-probability).
        Steps with no click are not events. Deterministic in `recsim.seed`."""
        n = self.p.num_sessions if num_sessions is None else num_sessions
        k, parts = self.p.slate_size, []
        for start in range(0, n, chunk):
            rng = np.random.default_rng([self.p.seed, 1, start])
            users = self.start_sessions(min(chunk, n - start), rng)
            noise = self.session_noise(len(users), rng)
            shown = {}

            def choose(sub: RecSimUsers, active: np.ndarray) -> np.ndarray:
                ordered, logp = self.logging_slates(sub, noise[active], rng)
                shown.update(ordered=ordered, logp=logp.sum(1))
                return ordered

            for t, active, _, res in run_sessions(self, users, choose, rng):
                hit = res.click != NO_CLICK
                parts.append(pd.DataFrame({
                    "session_id": start + active[hit], "item_id": res.click[hit], "step": t,
                    "reward": res.reward[hit],
                    **{f"shown_{j}": shown["ordered"][hit, j] for j in range(k)},
                    "slate_logp": shown["logp"][hit]}))
            if progress is not None:
                progress.update(len(users))
        columns = ["session_id", "item_id", "step", "reward"] + [f"shown_{j}" for j in range(k)] + ["slate_logp"]
        log = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
        log["timestamp"] = 1.6e9 + 3600.0 * log["session_id"] + 30.0 * log["step"]
        log = log.sort_values(["session_id", "step"], kind="stable", ignore_index=True)
        return log[["session_id", "item_id", "timestamp", "reward"] + columns[4:]]
