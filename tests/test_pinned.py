"""The simulated data set and the simulator's rollouts, pinned bit for bit.

Committed results (results/, the README's figures) were made from the default pool and from online
rollouts; a refactoring that changed either would silently invalidate them. The digests below were
computed by the code that made those results; a deliberate change of the simulator must update them
and say so.
"""
import hashlib

import numpy as np
import pytest

from replay_buffer import build_pool
from seqrec.running.config import load_config
from seqrec.worlds.online import logging_policy, oracle_policy, random_policy, rollout
from seqrec.worlds.simulator import Simulator

# numpy's vectorized exp/log round differently where it dispatches to AVX-512 (NumPy's X86_V4 /
# AVX512_ICL targets), so the simulator's Gumbel draws, and a few slates and clicks, differ on such CPUs:
# one digest per build. The committed results were made on the first.
DEFAULT_POOLS = {
    "ee77472897adc9bb44cc586dd58073b5f7959181c3a009c61b334c28b120269b": "without AVX-512",
    "2cee8c3d32a430d3137a4fb87e11c8dd7ca3ec84bfe2b3a4f527b2cfb7ba7d28": "with AVX-512 (same pool counts)",
}
ROLLOUTS = {  # 300 users, seed 3, 20% random slates: summed return, clicks, purchases, slates, log digest
    "logging": (350.6, 1361, 98, 1514, "e05ba4026c9370c9225b7f85a31eb8d3109245af7ef907b82c97d95d5b5fe7a8"),
    "oracle": (544.8, 1688, 259, 1785, "39bef717a2eb994c09c4b2cb6a94e18a6554166a53e709b511edbbac4eb49535"),
    "random": (295.4, 1201, 69, 1400, "b1191a5cab2e84a0b75e82bc4369a52fe0834cea26bbeb01c80e3bbb85f87830"),
}


def digest(*arrays, texts=()) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    for t in texts:
        h.update("\n".join(t).encode())
    return h.hexdigest()


def test_default_pool_is_unchanged(tmp_path):
    pool = build_pool(load_config(overrides=[f"pool.dir={tmp_path / 'pool'}"]))
    assert (pool.meta["num_events"], pool.meta["num_sessions"]) == (99_131, 14_865)
    assert digest(pool.items, pool.rewards, pool.purchase, pool.offsets,
                  texts=(pool.item_ids, pool.session_ids)) in DEFAULT_POOLS


@pytest.mark.parametrize("name", sorted(ROLLOUTS))
def test_rollouts_are_unchanged(name):
    sim = Simulator.from_config(load_config())
    policy = {"logging": lambda: logging_policy(sim, 3), "oracle": lambda: oracle_policy(sim),
              "random": lambda: random_policy(sim.p.num_items, 3)}[name]()
    r = rollout(sim, policy, 300, seed=3, explore=0.2, record=True)
    ret, clicks, purchases, slates, log = ROLLOUTS[name]
    assert float(r.returns.sum()) == pytest.approx(ret, abs=1e-9)
    assert (int(r.clicks.sum()), int(r.purchases.sum()), int(r.slates.sum())) == (clicks, purchases, slates)
    clicks_log = r.log[["session_id", "item_id", "step", "purchase"]]        # the slates recorded beside it are newer
    assert hashlib.sha256(clicks_log.to_csv(index=False).encode()).hexdigest() == log
