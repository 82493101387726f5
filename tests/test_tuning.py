"""compare.py --tune: every model gets a grid of the same size, the table marks the best validation point."""
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import compare, tuning

ROOT = Path(__file__).resolve().parents[1]


def test_every_model_gets_eight_distinct_points_of_its_recipe():
    for model in tuning.OWN:
        points = tuning.grid(model)
        assert len(points) == 8 and len({tuple(p) for p in points.values()}) == 8, model
        for name, point in points.items():
            assert name.startswith(model + tuning.SEP)
            cfg = compare.load_config(None, compare.MODELS[model] + point)   # every override is a valid key
            assert cfg.train.lr in (0.001, 0.003) and cfg.model.dropout in (0.2, 0.5)
    with pytest.raises(SystemExit, match="no tuning grid for gru-nope"):
        tuning.grid("gru-nope")


def test_the_transfer_grid_is_the_point_chosen_elsewhere_and_the_recipe(tmp_path):
    path = tmp_path / "elsewhere.csv"
    pd.DataFrame([{"model": "gru4rec", "settings": "train.lr=0.001,model.dropout=0.5", "chosen": True},
                  {"model": "gru4rec", "settings": "train.lr=0.003,model.dropout=0.2", "chosen": False}]).to_csv(path, index=False)
    points = tuning.transfer_grid("gru4rec", tuning.chosen_settings(path))
    assert points == {"gru4rec~train.lr=0.001,model.dropout=0.5": ["train.lr=0.001", "model.dropout=0.5"],
                      "gru4rec~recipe": []}
    with pytest.raises(SystemExit, match="sasrec has no chosen point"):
        tuning.transfer_grid("sasrec", tuning.chosen_settings(path))
    pd.DataFrame([{"model": "gru4rec", "settings": "recipe", "chosen": True}]).to_csv(path, index=False)
    assert tuning.chosen_settings(path) == {"gru4rec": []}   # the recipe chosen: nothing added to it


def test_the_table_marks_each_models_best_validation_point_and_ignores_test():
    rows = pd.DataFrame([
        {"model": "a~lr=1", "split": "valid", "metric": "NDCG@10", "value": 0.10},
        {"model": "a~lr=2", "split": "valid", "metric": "NDCG@10", "value": 0.12},
        {"model": "a~lr=2", "split": "test", "metric": "NDCG@10", "value": 0.01},
        {"model": "a~lr=1", "split": "test", "metric": "NDCG@10", "value": 0.50},     # test is never looked at
        {"model": "b~lr=1", "split": "valid", "metric": "NDCG@10", "value": 0.30},
        {"model": "b~lr=2", "split": "valid", "metric": "NDCG@10", "value": 0.30},     # a tie: the first wins
        {"model": "b~lr=2", "split": "valid", "metric": "HR@10", "value": 0.90},
    ])
    table = tuning.tuning_table(rows, "NDCG@10")
    assert table[["model", "settings", "chosen"]].values.tolist() == [
        ["a", "lr=1", False], ["a", "lr=2", True], ["b", "lr=1", True], ["b", "lr=2", False]]


def test_a_later_grid_replaces_its_models_rows_and_keeps_the_others():
    old = pd.DataFrame({"model": ["a", "a", "b"], "settings": ["x", "y", "x"], "chosen": [True, False, True]})
    new = pd.DataFrame({"model": ["b", "c"], "settings": ["z", "z"], "chosen": [True, True]})
    assert tuning.merged_tables(old, new).values.tolist() == [["a", "x", True], ["a", "y", False],
                                                             ["b", "z", True], ["c", "z", True]]


def test_tune_then_tuned_on_quick_data(tmp_path):
    """The user's two commands: --tune writes the table, --tuned trains with each model's chosen point."""
    base = [sys.executable, "-m", "benchmarks.compare", "--quick", "--data", "movielens-loo",
            "--runs", str(tmp_path / "runs"), "--models", "gru4rec", "--set", "model.hidden=8"]
    proc = subprocess.run(base + ["--tune", "--out", str(tmp_path / "tuning")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_csv(tmp_path / "tuning" / "movielens-loo.csv")
    assert len(table) == 8 and table["chosen"].sum() == 1 and set(table["model"]) == {"gru4rec"}
    assert table["epochs"].between(1, 2).all() and (table["best_epoch"] <= table["epochs"]).all()
    assert table["valid/NDCG@10"].between(0, 1).all()
    chosen = dict(kv.split("=") for kv in table.loc[table["chosen"], "settings"].item().split(","))
    tuned = [a if a != "gru4rec" else "gru4rec,full" for a in base]        # full: not tuned, its recipe as it is
    proc = subprocess.run(tuned + ["--tuned", str(tmp_path / "tuning" / "movielens-loo.csv"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (saved,) = (tmp_path / "runs").glob("movielens-loo-quick/gru4rec/seed0/config.yaml")
    cfg = compare.load_config(None, [f"{k}={v}" for k, v in chosen.items()])
    trained = compare.load_config(saved)
    assert (trained.train.lr, trained.model.dropout, trained.train.weight_decay) == \
        (cfg.train.lr, cfg.model.dropout, cfg.train.weight_decay)
    assert trained.train.patience == 5 and trained.train.epochs == 2      # the budget, then --quick's cap
    assert "not in " in proc.stdout and "trained at their recipes: full" in proc.stdout
    assert "1 already done" in proc.stdout      # seed 0 at the chosen point is the tuning run, copied in
    # The paired differences: full against the one baseline, both protocols, an interval around each
    diffs = pd.read_csv(tmp_path / "out" / "differences.csv")
    assert diffs[["protocol", "model", "baseline"]].values.tolist() == [["loo", "full", "gru4rec"],
                                                                       ["loo-unmasked", "full", "gru4rec"]]
    assert (diffs["ci_low"] <= diffs["diff"]).all() and (diffs["diff"] <= diffs["ci_high"]).all()
    summary = pd.read_csv(tmp_path / "out" / "summary.csv").set_index(["protocol", "model", "metric"])["mean"]
    for protocol in ("loo", "loo-unmasked"):        # one seed: the paired mean is the difference of the means
        got = diffs.set_index("protocol").loc[protocol, "diff"]
        want = summary[(protocol, "full", "NDCG@10")] - summary[(protocol, "gru4rec", "NDCG@10")]
        assert abs(got - want) < 1e-5


@pytest.mark.parametrize("content", [None, "a,b\n1,2\n"])
def test_a_missing_or_foreign_tuning_table_is_one_clear_line(tmp_path, content):
    path = tmp_path / "t.csv"
    if content is not None:
        path.write_text(content)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.compare", "--quick", "--data", "movielens-loo",
                           "--models", "gru4rec", "--tuned", str(path), "--runs", str(tmp_path / "runs")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "tuning table" in proc.stderr

