"""One tuning protocol for every model (compare.py --tune): the same grid size for each, chosen on validation.

Each model gets 8 configurations: Adam's learning rate {1e-3, 3e-3} x dropout {0.2, 0.5} x two values of
the one parameter of its own that matters most (OWN). Every configuration trains to early stopping
(TUNE_BUDGET) with seed 0; the one with the best validation figure (eval.select_metric, of the head the
model ranks with) is chosen, and the comparison then trains every seed with it (compare.py --tuned).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from benchmarks.report import SELECT
from seqrec.running.atomic import atomic_write
from seqrec.running.errors import UserError

SHARED = [("train.lr", (0.001, 0.003)), ("model.dropout", (0.2, 0.5))]
# Each model's own key parameter. CE-only models have no loss parameter: their regulariser stands in.
OWN = {
    "gru4rec": ("train.weight_decay", (0.0, 0.0001)),
    "sasrec": ("train.weight_decay", (0.0, 0.0001)),
    "gru4rec-w10": ("train.weight_decay", (0.0, 0.0001)),
    "sasrec-w10": ("train.weight_decay", (0.0, 0.0001)),
    "gru-sqn": ("train.alpha", (0.3, 1.0)),                 # the TD loss's weight beside the CE
    "snqn": ("train.q_negatives", (10, 50)),                # SNQN's negatives per state
    "sa2c": ("train.advantage_warmup", (1000, 5000)),       # steps of plain CE before the advantage weighs it
    "full": ("train.alpha", (1.0, 3.0)),
    "full-sasrec": ("train.alpha", (1.0, 3.0)),
    "full-mix": ("train.alpha", (1.0, 3.0)),
}
# Every tuned run, and every run of a tuned comparison: to early stopping within an epoch cap.
TUNE_BUDGET = ["train.epochs=40", "train.patience=5"]
SEP = "~"          # a grid point's variant name: <model>~<key>=<value>,...
RECIPE = "recipe"  # the settings of the point that adds nothing to the model's recipe (transfer_grid)


def grid(model: str) -> dict[str, list[str]]:
    """The model's 8 grid points: variant name -> overrides (added after the model's recipe)."""
    if model not in OWN:
        raise SystemExit(f"error: no tuning grid for {model}; --tune knows {', '.join(OWN)}")
    axes = [*SHARED, OWN[model]]
    points = [[]]
    for key, values in axes:
        points = [p + [f"{key}={v}"] for p in points for v in values]
    return {f"{model}{SEP}{','.join(p)}": p for p in points}


def transfer_grid(model: str, chosen: dict[str, list[str]]) -> dict[str, list[str]]:
    """A 2-point grid for a data set too large to tune on (compare.py --tune --transfer): the model's
    point chosen on another data set (`chosen`, from chosen_settings) and its untuned recipe, so settings
    that do not carry over lose to the recipe on this data set's own validation figures."""
    if model not in chosen:
        raise SystemExit(f"error: {model} has no chosen point in the --transfer table; tune it first")
    return {f"{model}{SEP}{','.join(chosen[model])}": chosen[model], f"{model}{SEP}{RECIPE}": []}


def tuning_table(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """From compare.py's rows of the grid's runs (model = a grid point's variant name): one row per
    point with its validation `metric`, and `chosen` marking each model's best point (first on ties)."""
    valid = rows[(rows["split"] == "valid") & (rows["metric"] == metric)]
    table = valid[["model", "value"]].rename(columns={"model": "variant", "value": f"valid/{metric}"})
    table.insert(0, "model", table["variant"].str.split(SEP).str[0])
    table.insert(2, "settings", table["variant"].str.split(SEP).str[1])
    best = table.groupby("model", sort=False)[f"valid/{metric}"].transform("max")
    first = table[table[f"valid/{metric}"] == best].groupby("model", sort=False).head(1).index
    return table.drop(columns="variant").assign(chosen=table.index.isin(first)).reset_index(drop=True)


def merged_tables(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """A tuning table with `new`'s models' rows in place of theirs in `old`; other models' rows stay."""
    return pd.concat([old[~old["model"].isin(new["model"])], new], ignore_index=True)


def chosen_settings(path: Path, flag: str = "--tuned") -> dict[str, list[str]]:
    """model -> the overrides of its chosen point, from a tuning table written by compare.py --tune."""
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise UserError(f"{flag} {path}: cannot read the tuning table ({type(e).__name__}); "
                        "pass a CSV that compare.py --tune wrote") from None
    if not {"model", "settings", "chosen"} <= set(table.columns):
        raise UserError(f"{flag} {path}: not a tuning table (needs columns model, settings, chosen); "
                        "pass a CSV that compare.py --tune wrote")
    return {row.model: [] if row.settings == RECIPE else row.settings.split(",")
            for row in table[table["chosen"]].itertuples()}


def write_tuning(runs, out: Path, command: str, collect_run) -> None:
    """Each data set's grid table (tuning.tuning_table) with every run's best epoch and epochs trained,
    to <out>/<dataset>-<protocol>.csv, beside the grids of other models tuned there before.
    `collect_run(run)` gives a run's figures (compare.collect_run)."""
    for ds in {id(run.dataset): run.dataset for run in runs}.values():
        mine = [run for run in runs if run.dataset is ds]
        rows = pd.DataFrame([r for run in mine for r in collect_run(run)])
        metric = SELECT["loo" if ds.protocol.startswith("loo") else "event"]
        table = tuning_table(rows, metric)
        epochs = [(json.loads((run.run_dir / "final.json").read_text())["best_epoch"],
                   len(pd.read_csv(run.run_dir / "metrics.csv"))) for run in mine]
        table["best_epoch"], table["epochs"] = [e[0] for e in epochs], [e[1] for e in epochs]
        path = out / f"{ds.name}-{ds.protocol}.csv"
        if path.is_file():
            table = merged_tables(pd.read_csv(path), table)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))
        print(f"python -m benchmarks.compare {command}\n{table.to_string(index=False)}\nwritten to {path}")
