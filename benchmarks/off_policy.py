"""Off-policy evaluation for compare.py --ope: every history-only policy of a world (the baselines and
each model's checkpoint of one seed) estimated from an impression log of fresh logging-policy sessions
by each estimator of seqrec/evaluation/ope.py and seqrec/evaluation/ope_eval.py, beside its true online return.

Writes ope.csv (estimates with 95% bootstrap intervals), ope-assessment.csv (each estimator's
Spearman, relative error and regret@1 against the truths) and ope.png. Run on its own, it gathers
several worlds' assessments into the spread of each estimator's figures across them:

    python -m benchmarks.off_policy sim0=results/ope/ope-assessment.csv results/ope/worlds/*/ope-assessment.csv \
        --out results/ope/spread.csv
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from model import SeqRecQ
from replay_buffer import Pool
from seqrec.running.atomic import atomic_write
from seqrec.worlds.online import (
    ModelPolicy,
    impression_log,
    pool_popularity_policy,
    simulator_for,
)
from seqrec.evaluation.ope_eval import (
    SEQUENTIAL_CLIP,
    Critic,
    Target,
    assess,
    critic_view,
    deterministic_slates,
    estimates,
    logging_propensities,
    model_based_estimates,
    target_propensities,
)
from seqrec.running.plots import pyplot, save_png
from seqrec.running.errors import UserError, run_cli
from seqrec.running.runs import load_checkpoint


NO_TRUTH = ("no off-policy estimate: the log holds no propensities (no importance weights), no shown-but-unclicked "
            "items (no click model for the direct method, cascade DR or FQE) and no simulator knows the truth")


def critic_of(policy: ModelPolicy) -> Critic:
    """A run's model as the model-based estimators' critic: its ssl head's next-item log-probabilities
    (over the items it saw)."""
    def log_probs(h):
        logits = policy(h, None)
        top = logits.max(1, keepdims=True)
        return logits - top - np.log(np.exp(logits - top).sum(1, keepdims=True))
    return Critic(log_probs)


OPE_CRITICS = ("q-T3-lam0.8", "full-T3-lam0.8", "full")     # --ope's critic, the first of them that was run


def ope_rows(ds, cfg, runs: list, rows: pd.DataFrame, draws: int, critic: str | None,
             seed: int = 0) -> list[dict]:
    """Every history-only policy of `ds` (the baselines, and each model's checkpoint of `seed`) estimated by
    each off-policy estimator on an impression log of online.sessions fresh logging-policy sessions (users
    of `seed`), beside its true online return (seed `seed`), plus the offline NDCG@10 rows the assessment
    compares with. The model-based estimators read model `critic`'s run (left out, with a line, when it
    was not run)."""
    sim, pool = simulator_for(cfg), Pool(Path(cfg.pool.dir))
    log = impression_log(sim, cfg.online.sessions, seed=seed, draws=draws)
    rng = np.random.default_rng([cfg.sim.seed, 61] + ([seed] if seed else []))
    logging = logging_propensities(sim, log, draws, rng)
    popular = pool_popularity_policy(sim, pool)
    targets = {"random": Target("uniform"), "logging": Target("logging"),
               "popular": Target("scores", lambda h: popular(h, None))}
    if log.marginals is not None:      # RecSim's logging policy reads the hidden user: not a policy of the history
        del targets["logging"]         # (no logits from a history to draw it, no online truth)
    seed_runs = {run.model: run for run in runs if run.dataset is ds and run.seed == seed}

    def policy_of(name: str, head: str | None = None) -> ModelPolicy:
        run = seed_runs[name]
        model = SeqRecQ.from_checkpoint(load_checkpoint(run.run_dir / "best.pt"), pool.num_items)
        return ModelPolicy.from_config(model, pool.item_ids, sim.p.num_items, run.config(), head=head)
    for name in seed_runs:
        targets[name] = Target("scores", lambda h, policy=policy_of(name): policy(h, None))
    critic = critic or next((name for name in OPE_CRITICS if name in seed_runs), OPE_CRITICS[0])
    view = critic_view(critic_of(policy_of(critic, "ssl")), log, sim.p.num_items) if critic in seed_runs else None
    if view is None:
        print(f"{ds.name}: no {critic} run, so no critic: the direct method, cascade DR and FQE are left out "
              f"(add it to --models or name another with --ope-critic)")
    of_seed = rows[(rows["dataset"] == ds.name) & (rows["seed"] == seed) & (rows["split"] == "test")]
    truth = of_seed[(of_seed["protocol"] == "online") & (of_seed["metric"] == "return")].set_index("model")["value"]
    out = []
    for name, target in tqdm(targets.items(), desc=f"off-policy estimates ({ds.name})", unit="policy"):
        slates = deterministic_slates(target, log.histories, sim.p.slate_size) if target.kind == "scores" else None
        probs = target_propensities(target, log, logging, sim.p.num_items, slates)
        found = estimates(log, probs, logging, rng)
        if view is not None:
            found += model_based_estimates(log, target, view, probs.prefix / logging.prefix, slates,
                                           getattr(sim, "logging_logits_after", None), rng)
        for r in found:
            out.append({"dataset": ds.name, "policy": name, **r, "truth": truth.get(name, np.nan)})
        offline_name = "popularity" if name == "popular" else name
        for kind in ("click", "purchase"):
            hit = of_seed[(of_seed["protocol"] == ds.protocol) & (of_seed["model"] == offline_name)
                          & (of_seed["metric"] == f"{kind}/NDCG@10")]["value"]
            if len(hit):
                out.append({"dataset": ds.name, "policy": name, "estimator": f"offline-{kind}-ndcg@10",
                            "estimate": float(hit.iloc[0]), "ci_low": np.nan, "ci_high": np.nan,
                            "truth": truth.get(name, np.nan), "clipped": np.nan})
    return out


def plot_ope(table: pd.DataFrame, png: Path) -> None:
    """Estimate against true return, a panel per estimator, a colour per data set, the diagonal drawn."""
    plt = pyplot()
    names = [e for e in dict.fromkeys(table["estimator"]) if not e.startswith("offline-")]
    cols = min(4, len(names))
    rows_ = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(4 * cols, 3.6 * rows_), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        for dataset, g in table[table["estimator"] == name].groupby("dataset"):
            ax.errorbar(g["truth"], g["estimate"], yerr=[g["estimate"] - g["ci_low"], g["ci_high"] - g["estimate"]],
                        fmt="o", capsize=2, label=dataset)
        top = max(table["truth"].max(), 0.1)
        ax.plot([0, top], [0, top], color="gray", ls="--", lw=1)
        ax.set(title=name, xlabel="true return (online)", ylabel="estimate")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    save_png(fig, png)


def write_ope(table: pd.DataFrame, out: Path) -> pd.DataFrame:
    """ope.csv, ope-assessment.csv and ope.png in `out`: the data sets estimated here replace their rows of
    an ope.csv already there, the other data sets' rows stay (one world at a time adds to the record)."""
    columns = ["dataset", "policy", "estimator", "estimate", "ci_low", "ci_high", "truth"]
    table = table[columns]
    if (out / "ope.csv").is_file():
        kept = pd.read_csv(out / "ope.csv")
        table = pd.concat([kept[~kept["dataset"].isin(set(table["dataset"]))][columns], table], ignore_index=True)
    atomic_write(out / "ope.csv", lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))
    assessment = assess(table)
    atomic_write(out / "ope-assessment.csv", lambda tmp: assessment.to_csv(tmp, index=False, float_format="%.4g"))
    plot_ope(table, out / "ope.png")
    return assessment


def run_ope(datasets, runs, rows: pd.DataFrame, config_of, draws: int, critic: str | None, seed: int,
            out: Path) -> None:
    """--ope: the estimates of every world among `datasets` (config_of(ds) its config), written to `out`."""
    table = []
    for ds in datasets:
        if not ds.online:
            print(f"{ds.name} ({ds.protocol}): {NO_TRUTH}")
            continue
        table += ope_rows(ds, config_of(ds), runs, rows, draws, critic, seed)
    if not table:
        return
    table = pd.DataFrame(table)
    assessment = write_ope(table, out)
    clipped = table.loc[table["estimator"] == "sequential", "clipped"]
    print(f"off-policy evaluation (sequential weights clipped at {SEQUENTIAL_CLIP:g} for {clipped.mean():.1%} "
          f"of rewarded steps on average):\n{assessment.to_string(index=False, float_format=lambda v: f'{v:.3f}')}")
    print(f"off-policy estimates written to {out}")


def spread(assessments: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Each estimator's Spearman and regret@1 across worlds {world: ope-assessment.csv's table}: the
    number of worlds, mean, min and max, and in how many worlds its first choice lost at most 10%."""
    rows = pd.concat([t.assign(world=w) for w, t in assessments.items()], ignore_index=True)
    g = rows.groupby("estimator", sort=False)
    out = pd.DataFrame({"worlds": g["world"].nunique(),
                        "spearman_mean": g["spearman"].mean(), "spearman_min": g["spearman"].min(),
                        "spearman_max": g["spearman"].max(), "regret_mean": g["regret_at_1"].mean(),
                        "regret_max": g["regret_at_1"].max(),
                        "worlds_regret_le_10pct": g["regret_at_1"].apply(lambda r: int((r <= 0.10).sum()))})
    return out.reset_index()


def main() -> None:
    p = argparse.ArgumentParser(description="The spread of each off-policy estimator's figures across worlds.")
    p.add_argument("assessments", nargs="+", metavar="[NAME=]CSV",
                   help="ope-assessment.csv files, one per world, named NAME or by their folder")
    p.add_argument("--dataset", default="simulated", help="the data set's rows to read from each file")
    p.add_argument("--out", required=True, help="the CSV to write")
    args = p.parse_args()
    tables = {}
    for given in args.assessments:
        name, _, path = given.rpartition("=")
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path} does not exist; run python -m benchmarks.compare ... --ope --ope-out {path.parent} first")
        table = pd.read_csv(path)
        tables[name or path.parent.name] = table[table["dataset"] == args.dataset]
    table = spread(tables)
    atomic_write(Path(args.out), lambda tmp: table.to_csv(tmp, index=False, float_format="%.4g"))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    run_cli(main)
