"""Paired differences over training seeds: online return and the values' fit, results/online-differences.csv.

    python -m benchmarks.online_differences results/one-vs-many-clickbait results/one-vs-many-recsim/a results/one-vs-many-recsim/b --out results/online-differences.csv

Each folder is a comparison's output (compare.py's runs.csv: a row per dataset, model, seed, metric). A
model and its baseline trained on the same seed saw the same data order and, online, met the same
simulated users, so the difference that matters is the per-seed one: d_s = model_s - baseline_s. Reported
per (model, baseline, metric): the mean of d_s over the seeds both ran, its 95% t interval
(mean +- t_{0.975, n-1} sd / sqrt(n)), and n. A difference counts when the interval excludes 0.

Pairs: every multi-step Q model against the one-step ones (`q-T1`, and `q-T1-w10` where it ran; a
dueling-head model against `q-T1-duel` too) on the
online return and the value figures (test RMSE, and R-squared against the true values where the world
gives them, against the realized returns otherwise); every Q model against `gru4rec`, the static best
list and (in RecSim) the myopic oracle on the online return.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd
from scipy import stats

from seqrec.running.atomic import atomic_write
from seqrec.running.errors import UserError, run_cli

ROOT = Path(__file__).resolve().parents[1]

COLUMNS = ["dataset", "model", "baseline", "metric", "diff", "ci_low", "ci_high", "n_seeds"]
ONE_STEP = ("q-T1", "q-T1-w10", "q-T1-duel")
REFERENCES = ("gru4rec", "static-list", "myopic-oracle")    # imitation, the best list from the log, RecSim's greedy oracle


def t_interval(d: pd.Series, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the per-seed differences `d`; the interval is NaN with fewer than 2 seeds."""
    n, mean = len(d), float(d.mean())
    if n < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * float(d.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half


def per_seed(runs: pd.DataFrame, dataset: str, model: str, metric: str, protocol: str) -> pd.Series:
    """seed -> the model's test figure (`protocol` rows: online, or the data set's offline one)."""
    rows = runs[(runs["dataset"] == dataset) & (runs["model"] == model) & (runs["metric"] == metric)
                & (runs["split"] == "test") & ((runs["protocol"] == "online") == (protocol == "online"))]
    return rows.set_index("seed")["value"].astype(float)


def pairs(models: list[str], value_figures: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(model, baseline, metric) of every comparison the models ran allow."""
    q = [m for m in models if m.startswith("q-")]
    out = []
    for base in [b for b in ONE_STEP if b in models]:
        for m in [m for m in q if m not in ONE_STEP and (m.endswith("-duel") or not base.endswith("-duel"))]:
            out += [(m, base, metric) for metric in ("return",) + value_figures]
        if base != ONE_STEP[0] and ONE_STEP[0] in models:
            out += [(base, ONE_STEP[0], metric) for metric in ("return",) + value_figures]
    for reference in [b for b in REFERENCES if b in models]:
        out += [(m, reference, "return") for m in q]
    return out


def differences(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for dataset in sorted(runs["dataset"].unique()):
        mine = runs[runs["dataset"] == dataset]
        models = sorted(mine["model"].unique())
        truth = "value/true_r2" if (mine["metric"] == "value/true_r2").any() else "value/r2"   # R^2 against true values where the world gives them
        for model, base, metric in pairs(models, ("value/rmse", truth)):
            protocol = "online" if metric == "return" else "offline"
            a, b = per_seed(runs, dataset, model, metric, protocol), per_seed(runs, dataset, base, metric, protocol)
            d = (a - b).dropna()
            if len(d):
                mean, low, high = t_interval(d)
                rows.append({"dataset": dataset, "model": model, "baseline": base, "metric": metric,
                             "diff": mean, "ci_low": low, "ci_high": high, "n_seeds": len(d)})
    return pd.DataFrame(rows, columns=COLUMNS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", help="comparison outputs holding runs.csv")
    p.add_argument("--out", default=str(ROOT / "results" / "online-differences.csv"))
    args = p.parse_args()
    frames = []
    for folder in args.folders:
        path = Path(folder) / "runs.csv"
        if not path.is_file():
            raise UserError(f"{path} does not exist; run benchmarks/compare.py with --out {folder} first")
        frames.append(pd.read_csv(path))
    runs = pd.concat(frames, ignore_index=True)          # baselines appear in every folder: keep one of each
    runs = runs.drop_duplicates(["dataset", "protocol", "model", "seed", "split", "metric"], keep="last")
    table = differences(runs)
    atomic_write(Path(args.out), lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        print(table.to_string(index=False))
    print(f"written to {args.out}")


if __name__ == "__main__":
    run_cli(main)
