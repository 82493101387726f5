"""Baselines and ablations in one command: the same split, budget and seeds for every model.

    python -m benchmarks.compare                        # everything: simulated + MovieLens-100K (117 runs of 2-5 min, ~4 h on 2 cores)
    python -m benchmarks.compare --data simulated       # or movielens (both protocols), simulated-delayed (clickbait), movielens-1m
    python -m benchmarks.compare --quick                # a smoke run in minutes (tiny data, 1 seed, 2 epochs)
    python -m benchmarks.compare --baselines-only --out results/baselines   # popularity and the online baselines only

Every trained model is `python train_offline.py` with the overrides in MODELS on top of the data
set's config, run in `runs/compare/<data>/<model>/seed<k>/` (a finished run with the same config is
reused and one stopped part way resumes from its last.pt, so an interrupted benchmark picks up where
it stopped). A finished run's figures are kept beside its final.json (collected.csv, per_user.csv), so a
runs folder committed without its checkpoints (--runs results/<x>/runs; *.pt is git-ignored there) still
counts as done and is collected in a later session or another clone. The best epoch of each run is
chosen on validation; test is evaluated once, on that epoch. Writes to `results/` (or `results/quick/`):
summary.csv (dataset,protocol,model,metric,mean,std,n_seeds), results.md, and plots of metric vs
lambda, metric vs T and training curves.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from tqdm import tqdm

from benchmarks.off_policy import OPE_CRITICS, run_ope
from benchmarks.paired import differences
from benchmarks.recipes import BASELINES, MODELS
from benchmarks.report import gather_value_tables, write_report
from benchmarks.tuning import (
    TUNE_BUDGET,
    chosen_settings,
    grid,
    transfer_grid,
    write_tuning,
)
from model import SeqRecQ
from replay_buffer import Pool, ensure_pool
from seqrec.running.atomic import atomic_write
from seqrec.running.config import WORLDS, load_config
from seqrec.running.errors import UserError, run_cli
from seqrec.evaluation.offline import evaluate, rank_queries
from seqrec.evaluation.metrics import ndcg
from seqrec.worlds.online import ModelPolicy, baseline_policies, rollout, simulator_for
from seqrec.running.runs import is_run_folder, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


# ================================================================================================
# What is compared (benchmarks/recipes.py)
# ================================================================================================
QUICK_MODELS = ["gru4rec", "gru-sqn", "ssl-multistep", "td-lambda-ssl1", "full-T3-lam0.8"]


@dataclass
class Dataset:
    name: str                     # the `dataset` column of summary.csv
    protocol: str                 # the `protocol` column
    config: str | None            # base config file (None = config.yaml alone)
    overrides: list[str] = field(default_factory=list)   # applied after each model's recipe: the data set's say wins
    quick: list[str] = field(default_factory=list)   # what --quick adds to shrink it
    online: bool = False          # evaluate in the simulator too


DATASETS = {
    "simulated": [Dataset("simulated", "event", None, online=True,
                          quick=["sim.num_sessions=3000", "pool.dir=data/pool-quick-sim"])],
    # the clickbait simulator, where planning pays; gamma 0.8 for every TD model (configs/sim-delayed.yaml says why)
    "simulated-delayed": [Dataset("simulated-delayed", "event", "configs/sim-delayed.yaml", ["train.gamma=0.8"], online=True,
                                  quick=["sim.num_sessions=3000", "pool.dir=data/pool-quick-sim-delayed"])],
    "movielens": [Dataset("movielens", "event", "configs/movielens-event.yaml",
                          quick=["data.max_sessions=200", "pool.dir=data/pool-quick-ml-event"]),
                  Dataset("movielens", "loo", "configs/movielens-loo.yaml",
                          quick=["data.max_sessions=200", "pool.dir=data/pool-quick-ml-loo"])],
    "movielens-event": [Dataset("movielens", "event", "configs/movielens-event.yaml",
                                quick=["data.max_sessions=200", "pool.dir=data/pool-quick-ml-event"])],
    "movielens-loo": [Dataset("movielens", "loo", "configs/movielens-loo.yaml",
                              quick=["data.max_sessions=200", "pool.dir=data/pool-quick-ml-loo"])],
    "movielens-1m": [Dataset("movielens-1m", "loo", "configs/movielens-1m-loo.yaml",
                             quick=["data.max_sessions=200", "pool.dir=data/pool-quick-ml1m-loo"])],
    # RecSim's interest evolution (a world nobody here wrote); gamma 0.99 and scaled rewards for every TD model
    "recsim": [Dataset("recsim", "event", "configs/recsim.yaml", ["train.gamma=0.99", "train.reward_scale=0"], online=True,
                       quick=["recsim.num_sessions=300", "pool.dir=data/pool-quick-recsim"])],
}
ALL = ("simulated", "movielens")   # --data all; movielens-loo is a part of movielens, movielens-1m takes hours
# Figures kept in summary.csv: per protocol, the test metrics (of the head each model ranks with, eval.head) worth a row.
EVENT_METRICS = [f"{kind}/{m}@{k}" for kind in ("click", "purchase") for m in ("HR", "NDCG") for k in (5, 10, 20)]
LOO_METRICS = [f"all/{m}@{k}" for m in ("HR", "NDCG") for k in (5, 10, 20)] + ["all/MRR"]
ONLINE_METRICS = ["return", "of_oracle", "ctr", "purchase_rate", "length"]
VALUE_METRICS = ["rmse", "bias", "spearman", "baseline_rmse", "r2", "true_r2", "n"]


@dataclass
class Run:
    dataset: Dataset
    model: str
    seed: int
    overrides: list[str]
    run_dir: Path

    def config(self):
        return load_config(ROOT / self.dataset.config if self.dataset.config else None, self.overrides)


# ================================================================================================
# Running
# ================================================================================================
def dataset_config(ds: Dataset, quick: bool, extra: list[str]):
    """A data set's own config (no model's recipe): its file, its overrides, --quick's and --set's."""
    return load_config(ROOT / ds.config if ds.config else None, ds.overrides + (ds.quick if quick else []) + extra)


def plan(datasets: list[Dataset], models: list[str], seeds: list[int], quick: bool, extra: list[str],
         variants: dict[str, list[str]], runs_dir: Path) -> list[Run]:
    runs = []
    for ds in datasets:
        tag = f"{ds.name}-{ds.protocol}" + ("-quick" if quick else "")
        for model in models:
            for seed in seeds:
                run_dir = runs_dir / tag / model / f"seed{seed}"
                overrides = ((ds.quick if quick else []) + extra + variants[model] + ds.overrides
                             + [f"train.seed={seed}", f"train.run_dir={run_dir}", "train.threads=1"])
                runs.append(Run(ds, model, seed, overrides, run_dir))
    return runs


def same_config(saved: dict, run: Run) -> bool:
    """Whether a saved config is the run's, its folder aside (the plan names the folder, so a moved or
    cloned runs folder still matches). Keys added to config.yaml since the run was made count at their
    defaults (a new key's default must leave results unchanged)."""
    def placeless(cfg: dict) -> dict:
        worlds = {w for s, w in WORLDS.items() if s != cfg["data"]["source"]}    # another source's world is not read
        return {**{k: v for k, v in cfg.items() if k not in worlds},
                "train": {k: v for k, v in cfg["train"].items() if k != "run_dir"}}
    return placeless(load_config(base=saved).to_dict()) == placeless(run.config().to_dict())


def is_done(run: Run) -> bool:
    """Finished with the same config, its checkpoints kept or its figures collected (collected.csv)."""
    saved = run.run_dir / "config.yaml"
    if not (run.run_dir / "final.json").is_file() or not saved.is_file():
        return False
    if not (run.run_dir / "best.pt").is_file() and not (run.run_dir / "collected.csv").is_file():
        return False
    return same_config(yaml.safe_load(saved.read_text()), run)


def adopt_twin(run: Run) -> bool:
    """Copy in a finished run of the same config and seed that another model name holds in the same runs
    folder (a tuning point and the comparison's run at the point it chose are one run): False if none."""
    if is_done(run):
        return False
    for other in sorted(run.run_dir.parent.parent.glob(f"*/{run.run_dir.name}")):
        if other != run.run_dir and is_done(Run(run.dataset, run.model, run.seed, run.overrides, other)):
            tmp = run.run_dir.with_name(run.run_dir.name + ".adopting")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(other, tmp)
            if run.run_dir.exists() and not is_run_folder(run.run_dir):
                raise UserError(f"{run.run_dir} is a folder this project did not write; move it out of the runs folder")
            shutil.rmtree(run.run_dir, ignore_errors=True)     # a run of another config: training would overwrite it
            tmp.rename(run.run_dir)
            print(f"{run.run_dir}: the finished run of {other} (same config), copied", flush=True)
            return True
    return False


def is_resumable(run: Run) -> bool:
    """Stopped part way (last.pt, no final.json) with the same config: continue it instead of restarting."""
    last = run.run_dir / "last.pt"
    if (run.run_dir / "final.json").is_file() or not last.is_file():
        return False
    try:
        saved = load_checkpoint(last)["config"]
    except UserError:                                   # a damaged last.pt: train from scratch
        return False
    return same_config(saved, run)


def train(run: Run) -> None:
    cmd = [sys.executable, str(ROOT / "train_offline.py")] + (["--resume"] if is_resumable(run) else [])
    if run.dataset.config:
        cmd += ["--config", str(ROOT / run.dataset.config)]
    for o in run.overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{run.run_dir}: train_offline.py failed:\n{proc.stderr[-2000:]}")
    record(run)


def record(run: Run) -> None:
    """Keep a finished run's figures beside it, so a later session or clone needs no checkpoint."""
    collect_run(run)
    if run.dataset.protocol == "loo":
        per_user_rows(run)


def build_pools(runs: list[Run]) -> None:
    """Build each data set's pool once, before parallel runs could race to build it."""
    seen = set()
    for run in runs:
        cfg = run.config()
        if cfg.pool.dir not in seen:
            seen.add(cfg.pool.dir)
            ensure_pool(cfg)


# ================================================================================================
# Collecting
# ================================================================================================
class PopularityRanker(torch.nn.Module):
    """Ranks every item by its count in the training events, whatever the history."""

    def __init__(self, pool: Pool):
        super().__init__()
        self.register_buffer("counts", torch.tensor(pool.train_item_counts(), dtype=torch.float32))

    def last_state(self, state: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(state), 1)

    def score_layer(self, state: torch.Tensor, head: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """scores = 1 * count + 0, as the linear layer that evaluation streams."""
        return state, self.counts[:, None], torch.zeros_like(self.counts)


def test_rows(ds: Dataset, model: str, seed: int, results: dict, split: str = "test") -> list[dict]:
    """Rows (one per figure) from {metric: value}; leave-one-out reports the `all/` figures by bare name."""
    rows = []
    protocols = {"event": EVENT_METRICS, "loo": LOO_METRICS, "loo-unmasked": LOO_METRICS}
    for protocol, values in results.items():
        for metric in protocols[protocol]:
            name = metric.removeprefix("all/") if protocol.startswith("loo") else metric
            rows.append({"dataset": ds.name, "protocol": protocol, "model": model, "seed": seed, "split": split,
                         "metric": name, "value": values[metric]})
    return rows


def is_fresh(cache: Path, run: Run) -> bool:
    """A figure file of the run made from its best.pt as it is now (or kept without it)."""
    best = run.run_dir / "best.pt"
    return cache.is_file() and (not best.is_file() or cache.stat().st_mtime >= best.stat().st_mtime)


def collect_run(run: Run) -> list[dict]:
    """Test and validation figures of one finished run, with the unmasked LOO and online ones; kept in
    the run's collected.csv once computed (named by the plan: an adopted twin's file names its first model)."""
    path = run.run_dir / "collected.csv"
    if not is_fresh(path, run):
        frame = pd.DataFrame(run_rows(run))
        atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.9g"))
    return pd.read_csv(path).assign(model=run.model).to_dict("records")


def run_rows(run: Run) -> list[dict]:
    final = json.loads((run.run_dir / "final.json").read_text())
    ds, cfg = run.dataset, run.config()
    head = cfg.eval.head                               # the head the model ranks with (and was selected on)
    rows = test_rows(ds, run.model, run.seed, {ds.protocol: final["heads"][head]})
    rows += test_rows(ds, run.model, run.seed, {ds.protocol: final["valid"][head]}, split="valid")
    rows += value_rows(ds, run, final)
    if ds.protocol == "loo" or ds.online:
        pool = Pool(Path(cfg.pool.dir))
        ckpt = load_checkpoint(run.run_dir / "best.pt")
        model = SeqRecQ.from_checkpoint(ckpt, pool.num_items)
        if ds.protocol == "loo":
            unmasked = evaluate(model, pool, "test", cfg.pool.state_len, cfg.eval.ks, cfg.eval.batch_size,
                                exclude_seen=False, heads=(head,), progress=False, beta=cfg.eval.beta,
                                rerank_top=cfg.eval.rerank_top)
            rows += test_rows(ds, run.model, run.seed, {"loo-unmasked": unmasked[head]})
        if ds.online:
            sim = simulator_for(cfg)
            policy = ModelPolicy.from_config(model, pool.item_ids, sim.p.num_items, cfg)
            summary = rollout(sim, policy, cfg.online.sessions, seed=run.seed, skip_memory=cfg.online.skip_memory).summary()
            rows += online_rows(ds, run.model, run.seed, summary)
    return rows


PAIRED_METRIC = "NDCG@10"      # results/differences.csv: per-user figures of this metric


def per_user_rows(run: Run) -> list[dict]:
    """A leave-one-out run's test NDCG@10 per user (event), seen items masked (`loo`) and not
    (`loo-unmasked`), of the head it ranks with; kept in the run's per_user.csv once computed."""
    path = run.run_dir / "per_user.csv"
    if not is_fresh(path, run):
        cfg = run.config()
        pool = Pool(Path(cfg.pool.dir))
        model = SeqRecQ.from_checkpoint(load_checkpoint(run.run_dir / "best.pt"), pool.num_items)
        table = {}
        for protocol, masked in (("loo", True), ("loo-unmasked", False)):
            events, ranks, _ = rank_queries(model, pool, "test", cfg.pool.state_len, cfg.eval.batch_size, masked,
                                            heads=(cfg.eval.head,), progress=False, beta=cfg.eval.beta,
                                            rerank_top=cfg.eval.rerank_top)
            k = int(PAIRED_METRIC.split("@")[1])
            table[protocol] = pd.Series(ndcg(*ranks[cfg.eval.head], k).numpy(), index=events)
        frame = pd.DataFrame(table).rename_axis("event").reset_index()
        atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.6g"))
    frame = pd.read_csv(path)
    return [{"dataset": run.dataset.name, "protocol": protocol, "model": run.model, "seed": run.seed,
             "event": int(e), "value": float(v)} for protocol in ("loo", "loo-unmasked")
            for e, v in zip(frame["event"], frame[protocol])]


def paired_tables(runs: list[Run], summary: pd.DataFrame, baselines: tuple[str, ...] = BASELINES
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """results/differences.csv (and its per-seed rows): on every leave-one-out data set, each trained
    model against the best baseline (of `baselines`, by mean validation NDCG@10), paired over test users."""
    pooled, seeds = [], []
    for ds in {id(run.dataset): run.dataset for run in runs if run.dataset.protocol == "loo"}.values():
        mine = [run for run in runs if run.dataset is ds]
        valid = summary[(summary["dataset"] == ds.name) & (summary["protocol"] == "loo")
                        & (summary["metric"] == f"valid/{PAIRED_METRIC}") & summary["model"].isin(baselines)]
        if valid.empty:
            continue
        baseline = valid.loc[valid["mean"].idxmax(), "model"]
        per_user = pd.DataFrame([row for run in tqdm(mine, desc=f"per-user figures, {ds.name}", unit="run")
                                 for row in per_user_rows(run)])
        models = [m for m in dict.fromkeys(run.model for run in mine) if m != baseline]
        for protocol in ("loo", "loo-unmasked"):
            a, b = differences(per_user[per_user["protocol"] == protocol], ds.name, protocol, PAIRED_METRIC,
                               baseline, models)
            pooled.append(a)
            seeds.append(b)
    if not pooled:
        return pd.DataFrame(), pd.DataFrame()
    return pd.concat(pooled, ignore_index=True), pd.concat(seeds, ignore_index=True)


def value_rows(ds: Dataset, run: Run, final: dict) -> list[dict]:
    """The value function's figures (`value/rmse`, ...) and the rankings that use it (`q/...`, `mix/...`),
    test and validation, of a run whose final.json has them (runs made before they were measured do not)."""
    rows = []
    for split, value, heads in (("test", final.get("value"), final["heads"]),
                                ("valid", final["valid"].get("value"), final["valid"])):
        for head in ("q", "mix"):
            if heads.get(head) is not None and run.config().train.alpha > 0:
                rows += [{**r, "metric": f"{head}/{r['metric']}"}
                         for r in test_rows(ds, run.model, run.seed, {ds.protocol: heads[head]}, split)]
        rows += [{"dataset": ds.name, "protocol": ds.protocol, "model": run.model, "seed": run.seed, "split": split,
                  "metric": f"value/{k}", "value": value[k]} for k in VALUE_METRICS if value and value.get(k) is not None]
    return rows


def online_rows(ds: Dataset, model: str, seed: int, summary: dict) -> list[dict]:
    return [{"dataset": ds.name, "protocol": "online", "model": model, "seed": seed, "split": "test",
             "metric": m, "value": summary[m]} for m in ONLINE_METRICS if m in summary]


def baseline_rows(ds: Dataset, cfg, seeds: list[int], cache: Path | None = None) -> list[dict]:
    """Popularity offline (deterministic: one seed) and the world's baselines online (per seed; with
    `cache`, a folder, each seed's rows are kept there under a hash of the config and read back)."""
    pool = Pool(Path(cfg.pool.dir))
    pop = PopularityRanker(pool)
    rows = []
    for split in ("test", "valid"):    # popularity ignores the state: a one-item window is all it is given
        views = {ds.protocol: evaluate(pop, pool, split, 1, cfg.eval.ks, cfg.eval.batch_size,
                                       cfg.eval.exclude_seen, heads=("ssl",), progress=False)["ssl"]}
        if ds.protocol == "loo" and split == "test":
            views["loo-unmasked"] = evaluate(pop, pool, split, 1, cfg.eval.ks,
                                             cfg.eval.batch_size, False, heads=("ssl",), progress=False)["ssl"]
        rows += test_rows(ds, "popularity", 0, views, split=split)
    if ds.online:
        sim = simulator_for(cfg)
        key = hashlib.sha256(json.dumps({k: v for k, v in cfg.to_dict().items() if k != "train"}, sort_keys=True)
                             .encode() + str(cfg.train.gamma).encode()).hexdigest()[:12]
        for seed in seeds:
            kept = cache / f"{key}-seed{seed}.csv" if cache is not None else None
            if kept is not None and kept.is_file():
                rows += pd.read_csv(kept).to_dict("records")
                continue
            mine = []
            for name, policy in baseline_policies(sim, pool, seed, cfg.train.gamma).items():
                run = rollout(sim, policy, cfg.online.sessions, seed=seed, skip_memory=cfg.online.skip_memory)
                mine += online_rows(ds, name, seed, run.summary())
            if kept is not None:
                frame = pd.DataFrame(mine)
                atomic_write(kept, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.9g"))
            rows += mine
    return rows


REFERENCE_POLICIES = ("oracle", "budget-oracle")     # the simulator's greedy oracle, RecSim's budget-aware one


def with_oracle_fraction(rows: pd.DataFrame) -> pd.DataFrame:
    """Online return as a fraction of the world's reference oracle's on the same users (same seed)."""
    ret = rows[(rows["protocol"] == "online") & (rows["metric"] == "return")]
    oracle = ret[ret["model"].isin(REFERENCE_POLICIES)].set_index(["dataset", "seed"])["value"]
    frac = ret.assign(metric="of_oracle", value=[v / oracle[(d, s)] for d, s, v in
                                                 zip(ret["dataset"], ret["seed"], ret["value"])])
    return pd.concat([rows, frac], ignore_index=True)


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """summary.csv: mean and std over seeds of every test figure; validation figures as `valid/...`."""
    rows = rows.assign(metric=np.where(rows["split"] == "valid", "valid/" + rows["metric"], rows["metric"]))
    g = rows.groupby(["dataset", "protocol", "model", "metric"], sort=False)["value"]
    out = g.agg(mean="mean", std=lambda v: v.std(ddof=1) if len(v) > 1 else math.nan, n_seeds="count")
    return out.reset_index()[["dataset", "protocol", "model", "metric", "mean", "std", "n_seeds"]]


# ================================================================================================
# Entry point
# ================================================================================================
def parse_variant(text: str) -> tuple[str, list[str]]:
    """NAME=BASE_MODEL:key=value;key=value (`;` apart, so values may hold YAML lists with commas)."""
    name, _, rest = text.partition("=")
    base, _, extra = rest.partition(":")
    if base not in MODELS or not name:
        raise SystemExit(f"error: --variant expects NAME=BASE_MODEL:key=value;...; BASE_MODEL one of {', '.join(MODELS)}")
    return name, MODELS[base] + [kv.strip() for kv in extra.split(";") if kv.strip()]


def merge_summary(path: Path, summary: pd.DataFrame) -> None:
    """Rows of `summary` replace every row of the CSV at `path` of the same model on the same data set and
    protocol, not only those of the same metric (a re-run that no longer reports a metric, or has fewer
    seeds, must not leave the old run's figures beside its own); the other models' rows stay."""
    group = ["dataset", "protocol", "model"]
    old = pd.read_csv(path) if path.is_file() else summary.iloc[:0]
    kept = old[~old.set_index(group).index.isin(summary.set_index(group).index)]
    merged = pd.concat([kept, summary], ignore_index=True)
    atomic_write(path, lambda tmp: merged.to_csv(tmp, index=False, float_format="%.6g"))


def parse_args() -> argparse.Namespace:
    """compare.py's command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="all", help=f"all, or one or more of {', '.join(DATASETS)}, comma-separated")
    p.add_argument("--quick", action="store_true", help="tiny data, 2 epochs, 1 seed, 5 models: minutes")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--models", help="comma-separated subset of: " + ", ".join(MODELS))
    p.add_argument("--variant", action="append", default=[], metavar="NAME=BASE:key=v;...",
                   help="an extra model, e.g. 'full-a2=full-T3-lam0.8:train.alpha=2;train.tau=0.1' (repeatable)")
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every run, e.g. train.epochs=3")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (each on one thread)")
    p.add_argument("--out", default=None, help="output folder (default results/, or results/quick/)")
    p.add_argument("--runs", default=str(ROOT / "runs" / "compare"), help="where the runs' folders go")
    p.add_argument("--baseline", metavar="MODEL", help="pair every model against this one of --models "
                   "(differences.csv) instead of the best of the published baselines by validation")
    p.add_argument("--merge-into", metavar="CSV", help="also merge the summary into this summary.csv: every row of a model "
                   "run here on the same dataset and protocol is replaced, the others kept")
    p.add_argument("--baselines-only", action="store_true",
                   help="no training: popularity offline and the simulator's policies online, in minutes")
    p.add_argument("--ope", action="store_true", help="also estimate every history-only policy's return off-policy "
                   "on the worlds' data sets (seed-0 runs): ope.csv, ope.png and ope-assessment.csv in --ope-out, where "
                   "rows of other data sets already there are kept")
    p.add_argument("--ope-out", default=str(ROOT / "results" / "ope"), help="where ope.csv, ope.png and "
                   "ope-assessment.csv go (--ope; default results/ope/)")
    p.add_argument("--ope-critic", help="the model (of --models) whose heads the direct method, cascade DR and "
                   f"FQE read (--ope; default the first run of {', '.join(OPE_CRITICS)})")
    p.add_argument("--ope-seed", type=int, default=0, help="whose checkpoints, online truths and impression-log "
                   "users --ope reads (a seed of --seeds)")
    p.add_argument("--ope-draws", type=int, default=100, help="Gumbel draws per slate for the logging "
                   "policy's position marginals (--ope)")
    p.add_argument("--tune", action="store_true", help="train each model's grid (benchmarks/tuning.py: 8 points, "
                   "seed 0, to early stopping) and write the validation table <data>-<protocol>.csv to --out "
                   "(default results/tuning/), each model's chosen point marked")
    p.add_argument("--transfer", metavar="CSV", help="with --tune: instead of the grid, 2 points per model, its "
                   "point chosen in this tuning table (tuned on another data set) and its untuned recipe")
    p.add_argument("--tuned", metavar="CSV", help="train each model of this tuning table (--tune's) with its chosen "
                   "point, to early stopping (" + " ".join(TUNE_BUDGET) + ")")
    p.add_argument("--value-tables", metavar="DIR,DIR", help="train nothing: gather the value.csv of these "
                   "compare.py outputs into --out's value.csv and value_lambda.png")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.value_tables:
        gather_value_tables([Path(d) for d in args.value_tables.split(",")], Path(args.out or ROOT / "results"))
        return

    variants = dict(MODELS)
    variants.update(parse_variant(v) for v in args.variant)
    models = args.models.split(",") if args.models else (QUICK_MODELS if args.quick else list(MODELS))
    if args.tuned:
        tuned = chosen_settings(Path(args.tuned))
        variants.update({m: MODELS[m] + tuned[m] for m in tuned})
        untuned = [m for m in models if m not in tuned]
        if untuned:
            print(f"not in {args.tuned}, trained at their recipes: {', '.join(untuned)}", flush=True)
    if args.transfer and not args.tune:
        raise SystemExit("error: --transfer chooses a tuning grid; add --tune")
    if args.tune:
        transfer = chosen_settings(Path(args.transfer), "--transfer") if args.transfer else None
        points = {name: MODELS[m] + point for m in models
                  for name, point in (transfer_grid(m, transfer) if transfer else grid(m)).items()}
        variants.update(points)
        models, args.seeds = list(points), 1
    models = [] if args.baselines_only else models
    models += [] if args.baselines_only else [parse_variant(v)[0] for v in args.variant]
    models = list(dict.fromkeys(models))          # a variant also named in --models runs once
    unknown = [m for m in models if m not in variants]
    if unknown:
        raise SystemExit(f"error: unknown model {unknown[0]}; choose from {', '.join(variants)}")
    if args.baseline and args.baseline not in models:
        raise SystemExit(f"error: --baseline {args.baseline} is not among the models run; add it to --models")
    seeds = list(range(1 if args.quick else args.seeds))
    if args.ope and args.ope_seed not in seeds:
        raise SystemExit(f"error: --ope-seed {args.ope_seed} is not among the seeds run (0 .. {len(seeds) - 1}); raise --seeds")
    budget = TUNE_BUDGET if args.tune or args.tuned else []       # --quick's 2 epochs, then --set, win over it
    extra = budget + (["train.epochs=2"] if args.quick else []) + args.extra
    keys = ALL if args.data == "all" else tuple(args.data.split(","))
    if set(keys) - set(DATASETS):
        raise SystemExit(f"error: unknown data set {sorted(set(keys) - set(DATASETS))[0]}; choose all or from {', '.join(DATASETS)}")
    datasets = [ds for key in keys for ds in DATASETS[key]]
    out = Path(args.out) if args.out else ROOT / "results" / ("quick" if args.quick else "")
    runs = plan(datasets, models, seeds, args.quick, extra, variants, Path(args.runs).resolve())
    for run in runs:                              # every config checked before any pool is built
        run.config()

    build_pools(runs)
    torch.set_num_threads(1)                      # each run collected in its training thread, one thread each
    for run in runs:
        adopt_twin(run)
    todo = [r for r in runs if not is_done(r)]
    for run in tqdm([r for r in runs if r not in todo], desc="recording finished runs", unit="run"):
        record(run)                               # before a stop part way could lose their checkpoints
    print(f"{len(runs)} runs, {len(runs) - len(todo)} already done; training {len(todo)} "
          f"({args.jobs} at a time)", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        for _ in tqdm(pool.map(train, todo), total=len(todo), desc="training", unit="run"):
            pass

    torch.set_num_threads(os.cpu_count() or 1)
    if args.tune:
        write_tuning(runs, Path(args.out) if args.out else ROOT / "results" / "tuning", " ".join(sys.argv[1:]),
                     collect_run)
        return
    rows = []
    for run in tqdm(runs, desc="collecting", unit="run"):
        rows += collect_run(run)
    for ds in datasets:
        cfg = dataset_config(ds, args.quick, extra)
        ensure_pool(cfg)
        rows += baseline_rows(ds, cfg, seeds, Path(args.runs) / f"{ds.name}-{ds.protocol}" / "baselines")
    rows = with_oracle_fraction(pd.DataFrame(rows))
    summary = summarize(rows)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "summary.csv", lambda tmp: summary.to_csv(tmp, index=False, float_format="%.6g"))
    atomic_write(out / "runs.csv", lambda tmp: rows.to_csv(tmp, index=False, float_format="%.6g"))
    text = write_report(out, summary, runs, "python -m benchmarks.compare " + " ".join(sys.argv[1:]))
    if args.merge_into:
        merge_summary(Path(args.merge_into), summary)
    diffs, per_seed = paired_tables(runs, summary, (args.baseline,) if args.baseline else BASELINES)
    if len(diffs):
        atomic_write(out / "differences.csv", lambda tmp: diffs.to_csv(tmp, index=False, float_format="%.6g"))
        atomic_write(out / "differences-per-seed.csv", lambda tmp: per_seed.to_csv(tmp, index=False, float_format="%.6g"))
        if args.merge_into:
            merge_summary(Path(args.merge_into).parent / "differences.csv", diffs)
            merge_summary(Path(args.merge_into).parent / "differences-per-seed.csv", per_seed)
        print(f"paired differences (test {PAIRED_METRIC}, 95% bootstrap over users):\n"
              f"{diffs.to_string(index=False, float_format=lambda v: f'{v:+.4f}')}")
    print(text)
    if args.ope:
        run_ope(datasets, runs, rows, lambda ds: dataset_config(ds, args.quick, extra), args.ope_draws,
                args.ope_critic, args.ope_seed, Path(args.ope_out))
    print(f"written to {out}")


if __name__ == "__main__":
    run_cli(main)
