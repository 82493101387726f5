"""Shared test helpers: small hand-built pools and configs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from replay_buffer import Pool, split_stats, write_pool
from seqrec.running.config import load_config
from seqrec.data.preprocess import Prepared
from seqrec.worlds.simulator import SimParams, Simulator


def pool_from_sessions(folder: Path, sessions: list[list[int]], purchases: list[list[bool]] | None = None,
                       splits=(None, None), reward_click=0.2, reward_purchase=1.0, split_mode="random",
                       shown: list[list[list[int]]] | None = None) -> Pool:
    """A pool whose sessions are the given lists of item ids (1..N). `splits` = (#train, #valid) sessions;
    `shown`: each event's slate (lists of item ids, any length), logged as its exposures."""
    purchases = purchases or [[False] * len(s) for s in sessions]
    items = np.array([i for s in sessions for i in s], dtype=np.int32)
    purchase = np.array([p for ps in purchases for p in ps], dtype=bool)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sessions])]).astype(np.int64)
    S = len(sessions)
    n_train = S if splits[0] is None else splits[0]
    n_valid = 0 if splits[1] is None else splits[1]
    prepared = Prepared(
        items=items, rewards=np.where(purchase, reward_purchase, reward_click).astype(np.float32),
        purchase=purchase, offsets=offsets,
        split_sessions={"train": [0, n_train], "valid": [n_train, n_train + n_valid],
                        "test": [n_train + n_valid, S]},
        item_ids=np.array([f"i{i}" for i in range(1, int(items.max()) + 1)], dtype=object),
        session_ids=np.array([f"s{s}" for s in range(S)], dtype=object))
    if shown is not None:
        slates = [slate for per_session in shown for slate in per_session]
        prepared.shown_items = np.array([i for slate in slates for i in slate], dtype=np.int32)
        prepared.shown_offsets = np.concatenate([[0], np.cumsum([len(slate) for slate in slates])]).astype(np.int64)
        prepared.slate_logp = np.full(len(items), -1.0, dtype=np.float32)
    meta = {"num_items": int(items.max()), "num_sessions": S, "num_events": len(items),
            "num_purchases": int(purchase.sum()), "config_hash": "test", "split_mode": split_mode,
            "splits_sessions": prepared.split_sessions, "splits": split_stats(offsets, purchase, prepared.split_sessions, split_mode)}
    write_pool(prepared, meta, folder)
    return Pool(folder)


def tiny_config(tmp: Path, *extra: str):
    """A config small enough to train in seconds, writing only under `tmp`."""
    return load_config(overrides=tiny_overrides(tmp) + list(extra))


def tiny_overrides(tmp: Path) -> list[str]:
    return [f"pool.dir={tmp / 'pool'}", f"train.run_dir={tmp / 'run'}", "sim.num_sessions=400",
            "sim.num_items=60", "sim.num_categories=5", "train.epochs=2", "train.batch_size=64",
            "model.hidden=16", "train.threads=1"]


def simulator(**sim) -> Simulator:
    """The default simulator (config.yaml) with some `sim` parameters changed."""
    cfg = load_config()
    return Simulator(SimParams.from_dict({**cfg.sim.to_dict(), **sim}), cfg.data.reward_click, cfg.data.reward_purchase)


def with_root_on_path() -> dict:
    """The environment for a subprocess run from another folder that must import the project (python -m
    benchmarks.<name>, as a user runs them from the repository root)."""
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
