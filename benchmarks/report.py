"""compare.py's report: the markdown tables (results.md), the sweep, value and training-curve plots,
and the value table of the lambda x T grids (value.csv)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from benchmarks.recipes import LAMBDAS
from seqrec.running.atomic import atomic_write, atomic_write_text
from seqrec.running.plots import pyplot, save_png



HEADLINE = {"event": ["purchase/NDCG@10", "purchase/HR@10", "click/NDCG@10", "click/HR@10"],
            "loo": ["NDCG@10", "HR@10", "MRR"], "loo-unmasked": ["NDCG@10", "HR@10", "MRR"],
            "online": ["return", "of_oracle", "ctr", "purchase_rate"]}
SELECT = {"event": "purchase/NDCG@10", "loo": "NDCG@10", "online": "return"}


def best_full(summary: pd.DataFrame, dataset: str, protocol: str) -> str | None:
    """The full model with the best *validation* figure (the tuning protocol: test is not looked at); on
    event-level data without purchases (RecSim), the click figure."""
    protocol = "loo" if protocol.startswith("loo") else protocol if protocol != "online" else "event"
    metrics = [SELECT[protocol]] + (["click/NDCG@10"] if protocol == "event" else [])
    mine = summary[(summary["dataset"] == dataset) & (summary["protocol"] == protocol)
                   & summary["model"].str.match(r"full($|-)") & summary["mean"].notna()]
    for metric in metrics:
        rows = mine[mine["metric"] == "valid/" + metric]
        if not rows.empty:
            return rows.loc[rows["mean"].idxmax(), "model"]
    return None


def markdown(summary: pd.DataFrame) -> str:
    """Tables of the test figures; the best full model is picked on the validation figures."""
    out = []
    tests = summary[~summary["metric"].str.startswith("valid/")]
    for (dataset, protocol), block in tests.groupby(["dataset", "protocol"], sort=False):
        reported = set(block.loc[block["mean"].notna(), "metric"])             # RecSim has no purchases
        metrics = [m for m in HEADLINE[protocol] if m in reported]
        best = best_full(summary, dataset, protocol)
        out += [f"### {dataset}, {describe_protocol(protocol)}", "",
                "| model | " + " | ".join(metrics) + " | seeds |", "|---" * (len(metrics) + 2) + "|"]
        for model, rows in block.groupby("model", sort=False):
            cells = rows.set_index("metric")
            vals = [f"{cells.loc[m, 'mean']:.4f} ± {cells.loc[m, 'std']:.4f}" if m in cells.index and
                    not math.isnan(cells.loc[m, "std"]) else (f"{cells.loc[m, 'mean']:.4f}" if m in cells.index else "")
                    for m in metrics]
            mark = " (best full, by validation)" if model == best else ""
            out.append(f"| {model}{mark} | " + " | ".join(vals) + f" | {int(rows['n_seeds'].max())} |")
        out.append("")
    return "\n".join(out)


def describe_protocol(protocol: str) -> str:
    return {"event": "event-level (SQN) protocol, test, seen items not masked",
            "loo": "leave-one-out, test, seen items masked",
            "loo-unmasked": "leave-one-out, test, seen items NOT masked (RecBole's sequential setting)",
            "online": "online in the simulator (each model ranking with its eval.head; return per session)"}[protocol]


def plot_sweeps(summary: pd.DataFrame, png_lambda: Path, png_horizon: Path) -> None:
    plt = pyplot()
    panels = [(d, p, m) for (d, p) in summary.groupby(["dataset", "protocol"], sort=False).groups
              for m in [HEADLINE[p][0]] if p != "loo-unmasked"]
    for png, sweep in ((png_lambda, "lambda"), (png_horizon, "horizon")):
        fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
        for ax, (dataset, protocol, metric) in zip(axes[0], panels):
            rows = summary[(summary["dataset"] == dataset) & (summary["protocol"] == protocol)
                           & (summary["metric"] == metric)].set_index("model")
            if sweep == "lambda":
                for T in (3, 5):
                    pts = [(lam, f"full-T{T}-lam{lam:g}") for lam in (0.0, 0.5, 0.8, 1.0)]
                    pts = [(x, m) for x, m in pts if m in rows.index]
                    if pts:
                        ax.errorbar([x for x, _ in pts], rows.loc[[m for _, m in pts], "mean"],
                                    yerr=rows.loc[[m for _, m in pts], "std"].fillna(0), marker="o", capsize=3,
                                    label=f"full, T={T}")
                ax.set_xlabel("lambda")
            else:
                for lam in (0.0, 0.5, 0.8, 1.0):
                    pts = [(1, "gru-sqn")] + [(T, f"full-T{T}-lam{lam:g}") for T in (3, 5)]
                    pts = [(x, m) for x, m in pts if m in rows.index]
                    if len(pts) > 1:
                        ax.errorbar([x for x, _ in pts], rows.loc[[m for _, m in pts], "mean"],
                                    yerr=rows.loc[[m for _, m in pts], "std"].fillna(0), marker="o", capsize=3,
                                    label=f"lambda={lam:g}")
                ax.set_xlabel("horizon T (T=1: GRU-SQN)")
            for ref, style in (("gru4rec", ":"), ("gru-sqn", "--"), ("oracle", "-")):
                if ref in rows.index:
                    ax.axhline(rows.loc[ref, "mean"], color="gray", ls=style, label=ref)
            ax.set(title=f"{dataset} {protocol}", ylabel=metric)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        save_png(fig, png)


VALUE_COLUMNS = ["dataset", "protocol", "recipe", "T", "lam", "metric", "mean", "std", "n_seeds"]


def value_table(summary: pd.DataFrame) -> pd.DataFrame:
    """value.csv: the value figures of the lambda x T grids, `full` (full-T{T}-lam{lam}, full-T1) and `q`
    (q-T{T}-lam{lam}, q-T1: Q_RECIPE), one row per (dataset, protocol, recipe, T, lam, metric) with mean,
    std and seeds; online return rows too where the models were run online. T = 1 is one run: lambda
    does not act."""
    rows = []
    for recipe in ("full", "q"):
        grid = {**{f"{recipe}-T{T}-lam{lam:g}": (T, [lam]) for T in (3, 5) for lam in LAMBDAS}, f"{recipe}-T1": (1, LAMBDAS)}
        for model, (T, lams) in grid.items():
            block = summary[(summary["model"] == model) & (summary["metric"].str.contains("value/")
                                                           | (summary["metric"] == "return"))]
            for lam in lams:
                rows += [{"dataset": r.dataset, "protocol": r.protocol, "recipe": recipe, "T": T, "lam": lam,
                          "metric": r.metric, "mean": r.mean, "std": r.std, "n_seeds": r.n_seeds} for r in block.itertuples()]
    return pd.DataFrame(rows, columns=VALUE_COLUMNS)


def plot_value_sweep(table: pd.DataFrame, png: Path) -> None:
    """Test value figures against lambda, a line per recipe and T, a row of panels per data set; where
    the data set was also run online, a last panel with the online return."""
    plt = pyplot()
    table = table.assign(recipe=table["recipe"].fillna("full")) if "recipe" in table else table.assign(recipe="full")
    sets = [key for key in dict.fromkeys(zip(table["dataset"], table["protocol"])) if key[1] != "online"]
    metrics = ["value/rmse", "value/bias", "value/spearman", "value/true_r2"]
    online = (table["protocol"] == "online") & (table["metric"] == "return")
    columns = len(metrics) + int(online.any())
    fig, axes = plt.subplots(len(sets), columns, figsize=(4.2 * columns, 3.3 * len(sets)), squeeze=False)
    for row, (dataset, protocol) in zip(axes, sets):
        mine = table[(table["dataset"] == dataset) & (table["protocol"] == protocol)]
        panels = [(m, mine) for m in metrics] + [("return", table[online & (table["dataset"] == dataset)])]
        for ax, (metric, rows) in zip(row, panels):
            if not (rows["metric"] == metric).any():
                ax.axis("off")
                continue
            for (recipe, T), line in rows[rows["metric"] == metric].groupby(["recipe", "T"]):
                line = line.sort_values("lam")
                ax.errorbar(line["lam"], line["mean"], yerr=line["std"].fillna(0), marker="o", capsize=3,
                            label=f"{recipe} T={T}", ls="-" if recipe == "q" else "--")
            if metric == "value/rmse":
                base = mine[mine["metric"] == "value/baseline_rmse"]["mean"]
                if len(base):
                    ax.axhline(base.mean(), color="gray", ls="--", label="position mean")
            ax.set(title=f"{dataset} {'online' if metric == 'return' else protocol}", xlabel="lambda",
                   ylabel=metric.removeprefix("value/"))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    save_png(fig, png)


def gather_value_tables(folders: list[Path], out: Path) -> None:
    """One value.csv and value_lambda.png in `out` from the value.csv of several compare.py outputs."""
    table = pd.concat([pd.read_csv(folder / "value.csv") for folder in folders], ignore_index=True)
    table = table.assign(recipe=table["recipe"].fillna("full") if "recipe" in table else "full")[VALUE_COLUMNS]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "value.csv", lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))
    plot_value_sweep(table, out / "value_lambda.png")


def plot_curves(runs: list, summary: pd.DataFrame, png: Path) -> None:
    """Validation select-metric per epoch (mean over seeds) for GRU4Rec, GRU-SQN and the best full model
    (or, where none of them ran, for every model run)."""
    plt = pyplot()
    groups = {}
    for run in runs:
        groups.setdefault((run.dataset.name, run.dataset.protocol), []).append(run)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 3.6), squeeze=False)
    for ax, ((dataset, protocol), group) in zip(axes[0], groups.items()):
        metric = group[0].config().eval.select_metric
        ran = list(dict.fromkeys(r.model for r in group))
        headline = ("gru4rec", "gru-sqn", "ssl-multistep", best_full(summary, dataset, protocol))
        for model in [m for m in headline if m in ran] or ran:
            curves = [pd.read_csv(r.run_dir / "metrics.csv") for r in group if r.model == model]
            column = f"valid/{metric}" if metric.startswith("value/") else f"valid/ssl/{metric}"
            mean = pd.concat([c.set_index("epoch")[column] for c in curves], axis=1).mean(axis=1)
            ax.plot(mean.index, mean.values, marker="o", label=model)
        ax.set(title=f"{dataset} {protocol}: validation", xlabel="epoch", ylabel=metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_png(fig, png)


def write_report(out: Path, summary: pd.DataFrame, runs, command: str) -> str:
    """results.md, the plots and value.csv of a comparison in `out`; returns the markdown."""
    text = markdown(summary)
    atomic_write_text(out / "results.md", f"Generated by `{command.strip()}`.\n\n{text}")
    if any(run.model.startswith("full-T") for run in runs):          # a sweep of T or lambda to plot
        plot_sweeps(summary, out / "lambda.png", out / "horizon.png")
    if runs:
        plot_curves(runs, summary, out / "curves.png")
    table = value_table(summary[~summary["metric"].str.startswith("valid/")])
    if len(table):
        atomic_write(out / "value.csv", lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))
        plot_value_sweep(table, out / "value_lambda.png")
    return text
