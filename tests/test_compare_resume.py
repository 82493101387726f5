"""benchmarks/compare.py: which runs it reuses, resumes or retrains."""

import pytest
import torch

from benchmarks import compare, off_policy, report
from seqrec.running.errors import UserError


def a_run(tmp_path, seed: int) -> "compare.Run":
    (run,) = compare.plan([compare.DATASETS["simulated"][0]], ["gru4rec"], [seed], True, [],
                          compare.MODELS, tmp_path)
    return run


def test_a_run_stopped_part_way_with_the_same_config_resumes(tmp_path):
    run = a_run(tmp_path, seed=0)
    run.run_dir.mkdir(parents=True)
    assert not compare.is_resumable(run)                     # nothing saved: train from scratch
    torch.save({"config": run.config().to_dict()}, run.run_dir / "last.pt")
    assert compare.is_resumable(run)
    other = compare.Run(run.dataset, run.model, 1, run.overrides + ["train.seed=1"], run.run_dir)
    assert not compare.is_resumable(other)                   # another config in the same folder: retrain
    (run.run_dir / "final.json").write_text("{}")
    assert not compare.is_resumable(run)                     # finished: is_done's business, not a resume


def test_a_damaged_last_checkpoint_is_retrained(tmp_path):
    run = a_run(tmp_path, seed=0)
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "last.pt").write_bytes(b"not a checkpoint")
    assert not compare.is_resumable(run)


def test_merge_into_replaces_the_same_models_rows_and_keeps_the_rest(tmp_path):
    import pandas as pd

    from benchmarks.compare import merge_summary
    path = tmp_path / "summary.csv"
    row = dict(dataset="simulated", protocol="online", metric="return", std=0.1, n_seeds=3)
    pd.DataFrame([{**row, "model": "full", "mean": 1.0}, {**row, "model": "gru4rec", "mean": 2.0}]).to_csv(path, index=False)
    merge_summary(path, pd.DataFrame([{**row, "model": "full", "mean": 3.0, "n_seeds": 5},
                                      {**row, "model": "sa2c", "mean": 4.0}]))
    got = pd.read_csv(path).set_index("model")["mean"].to_dict()
    assert got == {"gru4rec": 2.0, "full": 3.0, "sa2c": 4.0}


def test_merge_into_drops_a_re_run_models_old_metrics_and_seeds(tmp_path):
    """A model re-run without a metric it once reported, or with fewer seeds, keeps none of its old rows."""
    import pandas as pd

    from benchmarks.compare import merge_summary
    path = tmp_path / "summary.csv"
    row = dict(dataset="movielens-1m", protocol="loo", std=0.1, n_seeds=2)
    pd.DataFrame([{**row, "model": "full", "metric": "NDCG@10", "mean": 0.15},
                  {**row, "model": "full", "metric": "value/rmse", "mean": 0.57},
                  {**row, "model": "full", "protocol": "loo-unmasked", "metric": "NDCG@10", "mean": 0.11},
                  {**row, "model": "sa2c", "metric": "NDCG@10", "mean": 0.13}]).to_csv(path, index=False)
    merge_summary(path, pd.DataFrame([{**row, "model": "full", "metric": "NDCG@10", "mean": 0.16, "n_seeds": 3}]))
    got = pd.read_csv(path)
    assert got[(got["model"] == "full") & (got["protocol"] == "loo")]["metric"].tolist() == ["NDCG@10"]
    assert len(got) == 3     # sa2c's row and full's other protocol stay

    per_seed = tmp_path / "differences-per-seed.csv"
    diff = dict(dataset="movielens-1m", protocol="loo", model="full", metric="NDCG@10")
    pd.DataFrame([{**diff, "baseline": "gru4rec", "seed": s, "diff": 0.1} for s in range(5)]).to_csv(per_seed, index=False)
    merge_summary(per_seed, pd.DataFrame([{**diff, "baseline": "sasrec", "seed": s, "diff": -0.1} for s in range(3)]))
    got = pd.read_csv(per_seed)
    assert sorted(got["seed"]) == [0, 1, 2] and set(got["baseline"]) == {"sasrec"}


def test_a_data_sets_overrides_win_over_the_models_recipe(tmp_path):
    """SQN's recipe says gamma 0.5; the clickbait data set says 0.8 for every model, and its config applies."""
    (run,) = compare.plan(compare.DATASETS["simulated-delayed"], ["gru-sqn"], [0], True, [], compare.MODELS, tmp_path)
    cfg = run.config()
    assert cfg.train.gamma == 0.8 and cfg.model.q_head == "linear" and cfg.sim.clickbait_exit == 0.7
    (plain,) = compare.plan(compare.DATASETS["simulated"], ["gru-sqn"], [0], True, [], compare.MODELS, tmp_path)
    assert plain.config().train.gamma == 0.5 and plain.config().sim.clickbait_exit == 0.0


def test_the_value_table_gathers_both_recipes_grids():
    import pandas as pd
    summary = pd.DataFrame([
        {"dataset": "d", "protocol": "event", "model": "full-T3-lam0.8", "metric": "value/rmse", "mean": 0.4, "std": 0.01, "n_seeds": 3},
        {"dataset": "d", "protocol": "event", "model": "q-T1", "metric": "value/rmse", "mean": 0.5, "std": 0.02, "n_seeds": 3},
        {"dataset": "d", "protocol": "online", "model": "q-T1", "metric": "return", "mean": 1.8, "std": 0.1, "n_seeds": 3},
        {"dataset": "d", "protocol": "event", "model": "q-T1", "metric": "purchase/NDCG@10", "mean": 0.1, "std": 0.0, "n_seeds": 3},
        {"dataset": "d", "protocol": "event", "model": "gru4rec", "metric": "value/rmse", "mean": 9.0, "std": 0.0, "n_seeds": 3},
    ])
    table = report.value_table(summary)
    assert list(table.columns) == report.VALUE_COLUMNS
    full = table[table["recipe"] == "full"]
    assert full[["T", "lam", "mean"]].values.tolist() == [[3, 0.8, 0.4]]
    q = table[table["recipe"] == "q"]
    assert sorted(q["lam"][q["metric"] == "value/rmse"]) == list(report.LAMBDAS)     # T 1: one run for every lambda
    assert set(q["metric"]) == {"value/rmse", "return"} and (q["T"] == 1).all()


def finished_without_checkpoints(run, figures: bool) -> None:
    """A run folder as a commit keeps it: config.yaml and final.json, *.pt git-ignored."""
    from seqrec.running.config import save_config
    run.run_dir.mkdir(parents=True)
    save_config(run.config(), run.run_dir / "config.yaml")
    (run.run_dir / "final.json").write_text("{}")
    if figures:
        (run.run_dir / "collected.csv").write_text(
            "dataset,protocol,model,seed,split,metric,value\nsimulated,event,gru4rec,0,test,click/HR@10,0.25\n")


def test_a_finished_run_kept_without_checkpoints_is_done_and_collected_from_its_figures(tmp_path):
    run = a_run(tmp_path, seed=0)
    finished_without_checkpoints(run, figures=True)
    assert compare.is_done(run)
    assert compare.collect_run(run) == [{"dataset": "simulated", "protocol": "event", "model": "gru4rec", "seed": 0,
                                         "split": "test", "metric": "click/HR@10", "value": 0.25}]


def test_a_finished_run_with_neither_checkpoint_nor_figures_is_retrained(tmp_path):
    run = a_run(tmp_path, seed=0)
    finished_without_checkpoints(run, figures=False)
    assert not compare.is_done(run)


def test_a_runs_folder_moved_elsewhere_still_counts_as_done(tmp_path):
    run = a_run(tmp_path / "here", seed=0)
    finished_without_checkpoints(run, figures=True)
    (tmp_path / "there").mkdir()
    (tmp_path / "here").rename(tmp_path / "there" / "clone")
    (moved,) = compare.plan([compare.DATASETS["simulated"][0]], ["gru4rec"], [0], True, [], compare.MODELS,
                            tmp_path / "there" / "clone")
    assert moved.run_dir != run.run_dir and compare.is_done(moved)
    other = compare.Run(moved.dataset, moved.model, 0, moved.overrides + ["train.lr=0.5"], moved.run_dir)
    assert not compare.is_done(other)                        # another config in that folder: retrain


def test_a_finished_run_of_the_same_config_under_another_name_is_adopted_not_retrained(tmp_path):
    """A tuning point (gru4rec~...) and the comparison's run at the point it chose are one run."""
    variants = {**compare.MODELS, "gru4rec~recipe": compare.MODELS["gru4rec"],
                "gru4rec~lr": compare.MODELS["gru4rec"] + ["train.lr=0.5"]}
    point, same, other = compare.plan([compare.DATASETS["simulated"][0]], ["gru4rec~recipe", "gru4rec", "gru4rec~lr"],
                                      [0], True, [], variants, tmp_path)
    assert not compare.adopt_twin(same)                      # nothing finished yet
    finished_without_checkpoints(point, figures=True)
    same.run_dir.mkdir(parents=True)
    (same.run_dir / "notes.txt").write_text("not a run")                # a folder the project did not write
    with pytest.raises(UserError, match="did not write"):
        compare.adopt_twin(same)
    assert (same.run_dir / "notes.txt").is_file()
    (same.run_dir / "notes.txt").unlink()
    (same.run_dir / "metrics.csv").write_text("epoch,loss\n1,2.0\n")     # a run of another config, stopped early
    assert compare.adopt_twin(same) and compare.is_done(same)
    assert sorted(p.name for p in same.run_dir.iterdir()) == ["collected.csv", "config.yaml", "final.json"]
    assert not compare.adopt_twin(same)                      # done already: nothing to copy
    assert {r["model"] for r in compare.collect_run(same)} == {"gru4rec"}
    assert {r["model"] for r in compare.collect_run(point)} == {"gru4rec~recipe"}   # figures named by the plan
    assert not compare.adopt_twin(other) and not compare.is_done(other)    # another config: trained


def test_the_best_full_model_is_picked_on_validation_among_every_full_recipe():
    import pandas as pd
    row = dict(dataset="d", protocol="loo", metric="valid/NDCG@10", std=0.0, n_seeds=5)
    summary = pd.DataFrame([{**row, "model": "full", "mean": 0.12}, {**row, "model": "full-mix", "mean": 0.11},
                            {**row, "model": "gru4rec", "mean": 0.13}, {**row, "model": "fullish", "mean": 0.2}])
    assert report.best_full(summary, "d", "loo-unmasked") == "full"
    event = [dict(dataset="r", protocol="event", model=m, metric=f"valid/{kind}/NDCG@10", mean=v, std=0.0, n_seeds=3)
             for m, kind, v in (("full", "purchase", None), ("full-mix", "purchase", None), ("full", "click", 0.17),
                                ("full-mix", "click", 0.18), ("gru4rec", "click", 0.19))]
    assert report.best_full(pd.DataFrame(event), "r", "online") == "full-mix"      # no purchases: by clicks


def test_write_ope_replaces_the_rows_of_the_data_sets_estimated_and_keeps_the_others(tmp_path):
    import pandas as pd
    def table(dataset, estimate):
        return pd.DataFrame([{"dataset": dataset, "policy": p, "estimator": "ips", "estimate": estimate + i,
                              "ci_low": 0.0, "ci_high": 9.0, "truth": 1.0 + i, "clipped": 0.0}
                             for i, p in enumerate(("random", "popular"))])
    off_policy.write_ope(table("a", 1.0), tmp_path)
    off_policy.write_ope(table("b", 2.0), tmp_path)
    off_policy.write_ope(table("a", 5.0), tmp_path)                 # a again: its rows replaced
    written = pd.read_csv(tmp_path / "ope.csv")
    assert sorted(written["dataset"]) == ["a", "a", "b", "b"] and "clipped" not in written
    assert written.set_index(["dataset", "policy"]).loc[("a", "random"), "estimate"] == 5.0
    assert set(pd.read_csv(tmp_path / "ope-assessment.csv")["dataset"]) == {"a", "b"}


def test_the_spread_of_each_estimator_across_worlds_by_hand():
    import pandas as pd
    world = lambda s, r: pd.DataFrame({"dataset": ["simulated"], "estimator": ["item-snips"], "n_policies": [11],  # noqa: E731
                                       "spearman": [s], "relative_error": [0.2], "regret_at_1": [r]})
    got = off_policy.spread({"a": world(0.9, 0.0), "b": world(0.5, 0.2), "c": world(0.7, 0.05)}).iloc[0]
    assert got["worlds"] == 3 and got["spearman_mean"] == pytest.approx(0.7)
    assert (got["spearman_min"], got["spearman_max"]) == (0.5, 0.9)
    assert got["regret_max"] == 0.2 and got["worlds_regret_le_10pct"] == 2
