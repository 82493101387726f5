"""A simulator of users browsing a catalogue: it generates the default data set and scores policies online.

The model (all of it a pure function of `sim.seed`):
- Items have a category, a unit latent vector near their category's centre, an *appeal* (popularity)
  and a *buyability*. A user (one per session) has a unit latent preference vector near the centre
  of a favourite category; affinity(user, item) is the cosine of the two vectors.
- Each step the user is shown a slate of k items and clicks item j with multinomial-logit probability
  exp(x_j) / (exp(leave_utility) + sum_i exp(x_i)), x_j = affinity_weight * affinity + appeal_j.
  The outside option means the user clicks nothing and leaves.
- After a click the user buys with probability sigmoid(buy_bias + buyability_j
  + buy_affinity_weight * affinity + buy_interest_weight * interest[category_j]).
- The delayed effect: `interest` per category decays by `interest_decay` each step, grows by 1 with
  every click in that category, and falls to 0 after a purchase there (satiation). Clicks therefore
  raise the chance of later purchases, so a policy that maximises only the immediate reward is not
  optimal.
- After a click the user leaves with probability `exit_prob` (`exit_prob_after_purchase` after a
  purchase), plus `clickbait_exit` when the item is clickbait (appeal above `clickbait_appeal`:
  popular, clicked readily, and it disappoints; off by default, on in configs/sim-delayed.yaml);
  no session runs past `max_session_len` steps.
- A logged event is one click; its type is `purchase` when the click was followed by a purchase.

The simulator knows no model: a policy is any callable that scores items for users, and the step
interface (`start_sessions`, `step`) lets callers show slates and see what users do.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from seqrec.running.errors import UserError
from seqrec.evaluation.ope import plackett_luce_log_probs

NO_CLICK = -1


@dataclass(frozen=True)
class SimParams:
    """The `sim` section of config.yaml, where every default and its meaning live."""
    seed: int
    num_sessions: int
    num_items: int
    num_categories: int
    dim: int
    slate_size: int
    max_session_len: int
    affinity_weight: float
    leave_utility: float
    exit_prob: float
    exit_prob_after_purchase: float
    clickbait_appeal: float
    clickbait_exit: float
    buy_bias: float
    buy_affinity_weight: float
    buy_interest_weight: float
    interest_decay: float
    logging_similarity: float
    logging_temperature: float

    @classmethod
    def from_dict(cls, d: dict) -> "SimParams":
        """From the `sim` section as a dict; a key that is not a parameter, or a missing one, is an error."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise UserError(f"unknown simulator parameter 'sim.{unknown[0]}'; the parameters are those of "
                            f"the sim section of config.yaml")
        missing = [n for n in names if n not in d]
        if missing:
            raise UserError(f"simulator parameter 'sim.{missing[0]}' is missing; start from the sim section of config.yaml")
        return cls(**d)


class UserRows:
    """Row access for a dataclass of per-user arrays (a world's batch of users, with a `done` field)."""

    def __len__(self) -> int:
        return len(self.done)

    def subset(self, rows: np.ndarray):
        """A copy of the users at `rows`."""
        return type(self)(*(getattr(self, f.name)[rows] for f in fields(self)))

    def update(self, rows: np.ndarray, sub) -> None:
        """Write `sub` (a stepped `subset(rows)`) back into rows `rows`."""
        for f in fields(self):
            getattr(self, f.name)[rows] = getattr(sub, f.name)


@dataclass
class Users(UserRows):
    """A batch of users in the middle of their sessions (B users, C categories, d dims)."""
    prefs: np.ndarray        # [B, d] unit preference vectors
    interest: np.ndarray     # [B, C] built-up interest per category
    last_click: np.ndarray   # [B] item index of the last click, NO_CLICK before the first
    length: np.ndarray       # [B] clicks so far
    done: np.ndarray         # [B] bool, session over


@dataclass
class StepResult:
    click: np.ndarray        # [B] clicked item index, NO_CLICK if none (or already done)
    purchase: np.ndarray     # [B] bool
    reward: np.ndarray       # [B] float: reward_click, reward_purchase or 0
    done: np.ndarray         # [B] bool, the session ended at this step


class Simulator:
    def __init__(self, params: SimParams, reward_click: float, reward_purchase: float):
        self.p = params
        self.reward_click, self.reward_purchase = reward_click, reward_purchase
        rng = np.random.default_rng([params.seed, 0])
        C, N, d = params.num_categories, params.num_items, params.dim
        # Category sizes and favourites follow a Zipf-like law, as in real catalogues.
        self.category_probs = 1.0 / np.arange(1, C + 1) ** 0.7
        self.category_probs /= self.category_probs.sum()
        self.centres = rng.normal(size=(C, d))
        self.item_category = rng.choice(C, size=N, p=self.category_probs)
        self.item_vecs = _unit(self.centres[self.item_category] + 0.5 * rng.normal(size=(N, d)))
        self.item_appeal = rng.normal(0.0, 0.5, size=N)
        self.item_buyability = rng.normal(0.0, 0.7, size=N)
        self.item_clickbait = self.item_appeal > params.clickbait_appeal

    @classmethod
    def from_config(cls, cfg) -> "Simulator":
        """The simulator of a config: its `sim` section, and the rewards of its `data` section."""
        return cls(SimParams.from_dict(cfg.sim.to_dict()), cfg.data.reward_click, cfg.data.reward_purchase)

    # ---------------------------------------------------------------- users and their choices
    def start_sessions(self, n: int, rng: np.random.Generator) -> Users:
        fav = rng.choice(self.p.num_categories, size=n, p=self.category_probs)
        prefs = _unit(self.centres[fav] + 1.0 * rng.normal(size=(n, self.p.dim)))
        return Users(prefs=prefs, interest=np.zeros((n, self.p.num_categories)),
                     last_click=np.full(n, NO_CLICK), length=np.zeros(n, dtype=np.int64),
                     done=np.zeros(n, dtype=bool))

    def affinity(self, users: Users, items: np.ndarray | None = None) -> np.ndarray:
        """Cosine of user and item vectors: [B, N] for all items, or [B, k] for `items` [B, k]."""
        if items is None:
            return users.prefs @ self.item_vecs.T
        return np.einsum("bd,bkd->bk", users.prefs, self.item_vecs[items])

    def click_utility(self, users: Users, items: np.ndarray | None = None) -> np.ndarray:
        appeal = self.item_appeal if items is None else self.item_appeal[items]
        return self.p.affinity_weight * self.affinity(users, items) + appeal

    def purchase_prob(self, users: Users, items: np.ndarray | None = None) -> np.ndarray:
        """Chance of a purchase if the user clicks the item, given the interest built so far."""
        cats = self.item_category if items is None else self.item_category[items]
        buy = self.item_buyability if items is None else self.item_buyability[items]
        interest = users.interest[:, cats] if items is None else np.take_along_axis(users.interest, cats, 1)
        return self._purchase_prob(self.affinity(users, items), buy, interest)

    def _purchase_prob(self, affinity: np.ndarray, buyability: np.ndarray, interest: np.ndarray) -> np.ndarray:
        """The purchase model itself, from broadcastable affinity, item buyability and category interest."""
        logit = (self.p.buy_bias + buyability + self.p.buy_affinity_weight * affinity
                 + self.p.buy_interest_weight * interest)
        return 1.0 / (1.0 + np.exp(-logit))

    def click_reward(self, p_buy: np.ndarray) -> np.ndarray:
        """The expected reward of a click that leads to a purchase with probability `p_buy` (any shape)."""
        return self.reward_click * (1 - p_buy) + self.reward_purchase * p_buy

    def step(self, users: Users, slates: np.ndarray, rng: np.random.Generator) -> StepResult:
        """Show slate `slates[b]` (item indices, [B, k]) to each user; users who are done ignore it."""
        B = len(users)
        utility = self.click_utility(users, slates)                              # [B, k]
        logits = np.concatenate([utility, np.full((B, 1), self.p.leave_utility)], axis=1)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        choice = (rng.random((B, 1)) > probs.cumsum(axis=1)).sum(axis=1)         # k = leave
        choice = np.minimum(choice, slates.shape[1])
        clicked = (choice < slates.shape[1]) & ~users.done
        click = np.where(clicked, slates[np.arange(B), np.minimum(choice, slates.shape[1] - 1)], NO_CLICK)
        return self.respond(users, clicked, click, rng)

    def respond(self, users: Users, clicked: np.ndarray, click: np.ndarray, rng: np.random.Generator) -> StepResult:
        """What follows a user's choice at a step: clicked [B] bool, click [B] item index (NO_CLICK if
        none) -> the purchase draw, the interest update, leaving; `users` is updated in place."""
        B = len(users)
        safe = np.where(clicked, click, 0)
        buy_p = self.purchase_prob(users, safe[:, None])[:, 0]
        purchase = clicked & (rng.random(B) < buy_p)

        # Interest: decay, then the clicked category grows, and a purchase satiates it.
        users.interest *= np.where(users.done, 1.0, self.p.interest_decay)[:, None]
        rows, cats = np.nonzero(clicked)[0], self.item_category[safe[clicked]]
        users.interest[rows, cats] += 1.0
        users.interest[np.nonzero(purchase)[0], self.item_category[safe[purchase]]] = 0.0

        leave_p = self.leave_prob(safe, purchase)
        users.length += clicked
        ends = ~users.done & (~clicked | (rng.random(B) < leave_p) | (users.length >= self.p.max_session_len))
        users.last_click = np.where(clicked, click, users.last_click)
        users.done = users.done | ends
        reward = np.where(purchase, self.reward_purchase, np.where(clicked, self.reward_click, 0.0))
        return StepResult(click=click, purchase=purchase, reward=reward, done=ends)

    def leave_prob(self, items: np.ndarray, bought: np.ndarray) -> np.ndarray:
        """The chance that a user who clicked `items` (any shape) and bought where `bought` leaves then."""
        base = np.where(bought, self.p.exit_prob_after_purchase, self.p.exit_prob)
        return np.minimum(base + self.p.clickbait_exit * self.item_clickbait[items], 1.0)

    # ---------------------------------------------------------------- policies that know the world
    def logging_preference(self, users: Users) -> np.ndarray:
        """The logging policy's scores before its noise: item appeal plus similarity to the last click. [B, N]"""
        return self.logging_preference_after(users.last_click)

    def logging_preference_after(self, last_click: np.ndarray) -> np.ndarray:
        """logging_preference of users whose last clicks are `last_click` [B] (NO_CLICK: none yet). [B, N]"""
        similar = np.where(last_click[:, None] >= 0, self.item_vecs[np.maximum(last_click, 0)] @ self.item_vecs.T, 0.0)
        return self.item_appeal + self.p.logging_similarity * similar

    def logging_logits_after(self, last_click: np.ndarray) -> np.ndarray:
        """The logging policy's Plackett-Luce logits (preference / temperature) after `last_click` [B]. [B, N]"""
        return self.logging_preference_after(last_click) / self.p.logging_temperature

    def logging_scores(self, users: Users, rng: np.random.Generator) -> np.ndarray:
        """The logging policy: popular items and items like the last click, with Gumbel noise. [B, N]"""
        noise = rng.gumbel(size=(len(users), self.p.num_items)) * self.p.logging_temperature
        return self.logging_preference(users) + noise

    def slate_log_prob(self, users: Users, ordered: np.ndarray) -> np.ndarray:
        """log P(the logging policy shows `ordered` [B, k], in that order): its top k of preference + Gumbel
        noise at scale tau is a Plackett-Luce draw with weights exp(preference / tau), so
        P = prod_j w_{i_j} / (sum of all w - sum_{l<j} w_{i_l}). 0 when tau = 0 (no noise). [B]"""
        if self.p.logging_temperature == 0:
            return np.zeros(len(users))
        return self.slate_position_log_probs(users, ordered).sum(1)

    def slate_position_log_probs(self, users: Users, ordered: np.ndarray) -> np.ndarray:
        """log P(ordered[:, l] at position l | the items above it) under the logging policy (summed over
        positions: slate_log_prob). [B, k]; requires logging_temperature > 0."""
        return plackett_luce_log_probs(self.logging_logits_after(users.last_click), ordered)

    def logging_slates(self, users: Users, rng: np.random.Generator) -> np.ndarray:
        """The slates the logging policy shows: its k best-scored items. [B, k]"""
        return top_k_slates(self.logging_scores(users, rng), self.p.slate_size)

    def oracle_scores(self, users: Users) -> np.ndarray:
        """Greedy oracle: click weight exp(x_j) times the expected reward of a click on j. [B, N]

        Ranking by this and showing the top k maximises the immediate expected reward of a slate
        under the logit model up to the slate's shared normaliser; it ignores the delayed effect.
        """
        p_buy = self.purchase_prob(users)
        return self.click_utility(users) + np.log(self.click_reward(p_buy))

    def posterior_oracle_scores(self, users: Users, histories: np.ndarray, particles: np.ndarray,
                                keep: int = 32, chunk: int = 64) -> np.ndarray:
        """The greedy oracle's criterion for a user whose preferences are not known, only what the
        clicks say of them: each of `particles` [P, d] (preference vectors drawn from the prior, as
        start_sessions draws them) is weighed by the chance of the user's clicks under the click model,
        exp(affinity_weight * affinity) per click (the slates' normalisers left out: the clicks alone,
        `histories` [B, H] of item indices, -1 = none); the `keep` heaviest particles of each user
        stand for the posterior, and an item scores log E[exp(x_j) * expected reward of a click on j].
        Reads the interest (a function of the clicks and purchases seen), never `users.prefs`. [B, N]"""
        aff = particles @ self.item_vecs.T                                                  # [P, N]
        B, N = len(users), self.p.num_items
        counts = np.zeros((B, N))
        rows, cols = np.nonzero(histories >= 0)
        np.add.at(counts, (rows, histories[rows, cols]), 1.0)
        log_like = self.p.affinity_weight * counts @ aff.T                                   # [B, P]
        keep = min(keep, len(particles))
        top = np.argpartition(-log_like, keep - 1, axis=1)[:, :keep]                         # [B, M]
        log_w = np.take_along_axis(log_like, top, 1)
        log_w -= np.logaddexp.reduce(log_w, axis=1, keepdims=True)
        out = np.empty((B, N))
        for s in range(0, B, chunk):
            a = aff[top[s:s + chunk]]                                                        # [b, M, N]
            interest = users.interest[s:s + chunk][:, None, self.item_category]              # [b, 1, N]
            p_buy = self._purchase_prob(a, self.item_buyability, interest)
            term = (log_w[s:s + chunk, :, None] + self.p.affinity_weight * a + self.item_appeal
                    + np.log(self.click_reward(p_buy)))
            out[s:s + chunk] = np.logaddexp.reduce(term, axis=1)
        return out

    def slate_value(self, users: Users) -> np.ndarray:
        """The expected immediate reward of the greedy oracle's slate for each user [B]: sum over its items
        of P(click j) (the logit model, leaving included) times j's expected reward. [B]"""
        slates = top_k_slates(self.oracle_scores(users), self.p.slate_size)
        weight = np.exp(self.click_utility(users, slates))
        value = self.click_reward(self.purchase_prob(users, slates))
        return (weight * value).sum(1) / (weight.sum(1) + np.exp(self.p.leave_utility))

    def after_click(self, users: Users, items: np.ndarray, bought: np.ndarray) -> Users:
        """A copy of users [B] in session as they are after clicking `items` [B] and buying where `bought`
        [B] (as `respond` updates them, with the outcome given instead of drawn)."""
        out = users.subset(np.arange(len(users)))
        rows, cats = np.arange(len(users)), self.item_category[items]
        out.interest *= self.p.interest_decay
        out.interest[rows, cats] += 1.0
        out.interest[rows[bought], cats[bought]] = 0.0
        out.last_click, out.length = np.asarray(items).copy(), out.length + 1
        return out

    def lookahead_scores(self, users: Users, width: int | None = None, chunk: int = 64) -> np.ndarray:
        """Lookahead oracle: the greedy oracle's `width` (default 2 slates) best items rescored by the
        click weight times the expected return of a click two steps deep: its reward, plus, if the user
        stays, the greedy slate's expected reward from the state the click (bought or not) leads to,
        undiscounted as the online return is. Computed exactly, not sampled. [B, N], others -inf."""
        width = min(width or 2 * self.p.slate_size, self.p.num_items)
        out = np.full((len(users), self.p.num_items), -np.inf)
        for start in range(0, len(users), chunk):
            sub = users.subset(np.arange(start, min(start + chunk, len(users))))
            B = len(sub)
            cand = top_k_slates(self.oracle_scores(sub), width)                               # [B, M]
            p_buy = self.purchase_prob(sub, cand)
            flat_users, flat_items = sub.subset(np.repeat(np.arange(B), width)), cand.reshape(-1)
            later = [self.slate_value(self.after_click(flat_users, flat_items, np.full(B * width, bought))).reshape(B, width)
                     for bought in (False, True)]
            stay = ((1 - p_buy) * (1 - self.leave_prob(cand, False)) * later[0]
                    + p_buy * (1 - self.leave_prob(cand, True)) * later[1])
            now = self.click_reward(p_buy)
            np.put_along_axis(out[start:start + B], cand, self.click_utility(sub, cand) + np.log(now + stay), 1)
        return out

    # ---------------------------------------------------------------- logged users, restored
    def session_prefs(self, session_ids: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """The preference vectors [B, d] of logged sessions `session_ids` [B] (generate_log's ids): each
        chunk's users are drawn first from that chunk's generator, so they can be drawn again."""
        session_ids = np.asarray(session_ids, dtype=np.int64)
        prefs = np.zeros((len(session_ids), self.p.dim))
        for start in np.unique(session_ids // chunk * chunk):
            rng = np.random.default_rng([self.p.seed, 1, int(start)])
            users = self.start_sessions(min(chunk, self.p.num_sessions - int(start)), rng)
            mine = np.flatnonzero(session_ids // chunk * chunk == start)
            prefs[mine] = users.prefs[session_ids[mine] - start]
        return prefs

    def users_after(self, prefs: np.ndarray, items: np.ndarray, purchases: np.ndarray, steps: np.ndarray) -> Users:
        """Users [B] (preferences `prefs` [B, d]) after the first `steps` [B] clicks of their logged
        sessions, items [B, P] (simulator item indices) with purchases [B, P]: the interest each click
        built and each purchase satiated, the last click, the session length. Still in session."""
        B = len(prefs)
        users = Users(prefs=np.asarray(prefs, dtype=np.float64), interest=np.zeros((B, self.p.num_categories)),
                      last_click=np.full(B, NO_CLICK), length=np.asarray(steps, dtype=np.int64).copy(),
                      done=np.zeros(B, dtype=bool))
        rows = np.arange(B)
        for t in range(int(np.max(steps, initial=0))):
            on = steps > t
            users.interest[on] *= self.p.interest_decay
            cats = self.item_category[items[on, t]]
            users.interest[rows[on], cats] += 1.0
            bought = on & purchases[:, t]
            users.interest[rows[bought], self.item_category[items[bought, t]]] = 0.0
            users.last_click = np.where(on, items[:, t], users.last_click)
        return users

    def click_value(self, users: Users, items: np.ndarray, choose: "SlateChooser", gamma: float,
                    rollouts: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Q(s, a) of the policy whose slates `choose` picks: the discounted return when each user [B]
        clicks `items` [B] now and is then shown that policy's slates, sampled `rollouts` times.
        Returns the mean and its standard error, each [B]."""
        B = len(users)
        many = users.subset(np.tile(np.arange(B), rollouts))                   # [rollouts * B]
        first = self.respond(many, np.ones(len(many), dtype=bool), np.tile(items, rollouts), rng)
        total, discount = first.reward.astype(np.float64), gamma
        for _, active, _, res in run_sessions(self, many, choose, rng):
            total[active] += discount * res.reward
            discount *= gamma
        runs = total.reshape(rollouts, B)
        sem = runs.std(0, ddof=1) / np.sqrt(rollouts) if rollouts > 1 else np.full(B, np.nan)
        return runs.mean(0), sem

    def logging_value(self, users: Users, items: np.ndarray, gamma: float, rollouts: int,
                      rng: np.random.Generator) -> np.ndarray:
        """The logging policy's Q(s, a) (click_value under its slates), the mean of `rollouts` runs. [B]"""
        return self.click_value(users, items, lambda sub, _: self.logging_slates(sub, rng), gamma, rollouts, rng)[0]

    def rollout_scores(self, users: Users, rollouts: int, rng: np.random.Generator, width: int | None = None,
                       max_rows: int = 16384) -> tuple[np.ndarray, np.ndarray]:
        """Rollout oracle (one step of policy improvement on the greedy oracle): the greedy oracle's `width`
        (default 2 slates, as the lookahead oracle) best items rescored by the click weight times the
        undiscounted return of a click on them when the greedy oracle shows every later slate, the mean of
        `rollouts` sampled sessions (Simulator.click_value). Returns the scores [B, N] (others -inf) and the return estimates'
        standard errors relative to their means [B, width]. At most `max_rows` sessions run at once."""
        width = min(width or 2 * self.p.slate_size, self.p.num_items)
        out = np.full((len(users), self.p.num_items), -np.inf)
        rel_sem = np.zeros((len(users), width))
        greedy = lambda sub, _: top_k_slates(self.oracle_scores(sub), self.p.slate_size)
        chunk = max(1, max_rows // (width * rollouts))
        for start in range(0, len(users), chunk):
            sub = users.subset(np.arange(start, min(start + chunk, len(users))))
            B = len(sub)
            cand = top_k_slates(self.oracle_scores(sub), width)                               # [B, M]
            flat_users = sub.subset(np.repeat(np.arange(B), width))
            value, sem = self.click_value(flat_users, cand.reshape(-1), greedy, 1.0, rollouts, rng)
            value, sem = value.reshape(B, width), sem.reshape(B, width)
            value = np.maximum(value, np.finfo(float).tiny)                                   # log of a zero return
            rel_sem[start:start + B] = sem / value
            score = self.click_utility(sub, cand) + np.log(value)
            np.put_along_axis(out[start:start + B], cand, score, 1)
        return out, rel_sem

    # ---------------------------------------------------------------- the logged data set
    def generate_log(self, num_sessions: int | None = None, chunk: int = 4096, progress=None) -> pd.DataFrame:
        """Sessions recorded under the logging policy, as an event log.

        Columns: session_id, item_id, timestamp (seconds), event (`click` | `purchase`), and what was
        shown: shown_0 .. shown_{k-1}, the slate of the click's step in the logging policy's order
        (its perturbed scores, best first), and slate_logp, the log-probability of that ordered slate
        (slate_log_prob). The slate shown when the user clicked nothing and left is not recorded.
        Loops over steps and chunks of sessions, never over events; deterministic in `sim.seed`.
        """
        n = self.p.num_sessions if num_sessions is None else num_sessions
        parts = []
        for start in range(0, n, chunk):
            rng = np.random.default_rng([self.p.seed, 1, start])
            users = self.start_sessions(min(chunk, n - start), rng)
            session_ids = np.arange(start, start + len(users))
            shown = {}

            def choose(sub: Users, active: np.ndarray) -> np.ndarray:
                scores = self.logging_scores(sub, rng)
                slates = top_k_slates(scores, self.p.slate_size)        # the order the user sees (and the log's draws)
                ordered = np.take_along_axis(slates, np.argsort(-np.take_along_axis(scores, slates, 1), 1), 1)
                shown.update(ordered=ordered, logp=self.slate_log_prob(sub, ordered))
                return slates

            for t, active, _, res in run_sessions(self, users, choose, rng):
                hit = res.click != NO_CLICK
                parts.append(pd.DataFrame({
                    "session_id": session_ids[active[hit]], "item_id": res.click[hit],
                    "step": t, "purchase": res.purchase[hit],
                    **{f"shown_{j}": shown["ordered"][hit, j] for j in range(self.p.slate_size)},
                    "slate_logp": shown["logp"][hit]}))
            if progress is not None:
                progress.update(len(users))
        exposure_columns = [f"shown_{j}" for j in range(self.p.slate_size)] + ["slate_logp"]
        log = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
            columns=["session_id", "item_id", "step", "purchase"] + exposure_columns)
        # A session starts every minute or so; a click takes about 30 seconds.
        jitter = np.random.default_rng([self.p.seed, 2]).uniform(0, 30, size=len(log))
        log["timestamp"] = 1.6e9 + 60.0 * log["session_id"] + 30.0 * log["step"] + jitter
        log["event"] = np.where(log["purchase"], "purchase", "click")
        log = log.sort_values(["session_id", "step"], kind="stable", ignore_index=True)
        return log[["session_id", "item_id", "timestamp", "event"] + exposure_columns]


SlateChooser = Callable[[Users, np.ndarray], np.ndarray]


def seeing(policy):
    """Mark a policy (a callable that scores items) as one that reads the hidden user, an oracle's way."""
    policy.sees_user = True
    return policy


def sees_user(policy) -> bool:
    return getattr(policy, "sees_user", False)


def run_sessions(sim: Simulator, users: Users, choose: SlateChooser,
                 rng: np.random.Generator) -> Iterator[tuple[int, np.ndarray, np.ndarray, StepResult]]:
    """The session loop, the one every user of the simulator runs: at each step t the users still in
    session (rows `active` of `users`) are shown `choose(active_users, active)` ([len(active), k] item
    indices) and respond; stops when every session has ended or after max_session_len steps.

    Yields (t, active, slates, result) after each step; `users` is updated in place.
    """
    for t in range(sim.p.max_session_len):
        active = np.nonzero(~users.done)[0]
        if len(active) == 0:
            return
        sub = users.subset(active)
        slates = choose(sub, active)
        result = sim.step(sub, slates, rng)
        users.update(active, sub)
        yield t, active, slates, result


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def top_k_slates(scores: np.ndarray, k: int) -> np.ndarray:
    """The k best-scored items of each row, unordered. scores [B, N] -> slates [B, k]"""
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]
