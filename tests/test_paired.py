"""Paired differences (results/differences.csv) against hand-computed figures."""
import numpy as np
import pandas as pd
import pytest

from benchmarks import paired


def table(values: dict) -> pd.DataFrame:
    """{(model, seed): [value of user 0, user 1, ...]} -> per-user rows."""
    return pd.DataFrame([{"model": m, "seed": s, "event": 100 + u, "value": v}
                         for (m, s), vs in values.items() for u, v in enumerate(vs)])


def test_per_seed_and_pooled_differences_by_hand():
    per_user = table({("a", 0): [0.5, 0.0, 1.0], ("a", 1): [0.3, 0.2, 0.4],
                      ("b", 0): [0.1, 0.1, 0.1], ("b", 1): [0.2, 0.2, 0.2]})
    assert paired.per_seed_differences(per_user, "a", "b") == pytest.approx({0: 0.5 - 0.1, 1: 0.3 - 0.2})
    diff, low, high = paired.paired_difference(per_user, "a", "b", np.random.default_rng(0))
    d = np.array([(0.5 + 0.3) / 2 - 0.15, (0.0 + 0.2) / 2 - 0.15, (1.0 + 0.4) / 2 - 0.15])
    assert diff == pytest.approx(d.mean())
    assert d.min() - 1e-12 <= low <= diff <= high <= d.max() + 1e-12


def test_a_constant_gain_has_a_zero_width_interval_and_only_shared_users_count():
    per_user = table({("a", 0): [0.3, 0.5, 0.7, 0.9], ("b", 0): [0.2, 0.4, 0.6]})   # b lacks user 3
    diff, low, high = paired.paired_difference(per_user, "a", "b", np.random.default_rng(0))
    assert diff == low == high == pytest.approx(0.1)
    with pytest.raises(ValueError, match="share no test user"):
        paired.paired_difference(per_user.assign(event=per_user["event"] + 10 * (per_user["model"] == "b")),
                                 "a", "b", np.random.default_rng(0))


def test_the_interval_has_the_width_of_the_per_user_spread():
    """d(u) ~ N(0.02, 0.1) over 1,600 users: the 95% interval is about 2 x 1.96 x 0.1 / 40 wide and
    holds the true mean; independent noise common to both models cancels (the point of pairing)."""
    rng = np.random.default_rng(1)
    common = rng.random(1600)                              # how hard each user is, shared by both models
    d = rng.normal(0.02, 0.1, 1600)
    per_user = table({("a", 0): common + d, ("b", 0): common})
    diff, low, high = paired.paired_difference(per_user, "a", "b", np.random.default_rng(0))
    assert low < 0.02 < high
    assert 0.8 * 0.0098 < high - low < 1.2 * 0.0098


def test_the_table_has_the_interface_columns():
    per_user = table({("a", 0): [0.3, 0.5], ("b", 0): [0.2, 0.4], ("c", 0): [0.2, 0.6]})
    pooled, seeds = paired.differences(per_user, "d", "loo", "NDCG@10", "b", ["a", "c"])
    assert list(pooled.columns) == ["dataset", "protocol", "model", "baseline", "metric", "diff", "ci_low", "ci_high"]
    assert pooled["model"].tolist() == ["a", "c"] and pooled["diff"].tolist() == pytest.approx([0.1, 0.1])
    assert seeds[["model", "seed"]].values.tolist() == [["a", 0], ["c", 0]]


def test_online_differences_pair_seeds_and_give_a_t_interval_by_hand():
    from benchmarks import online_differences as od
    rows = []
    for seed, (t1, t3, gru, rmse1, rmse3) in enumerate([(1.0, 1.5, 0.5, 0.40, 0.38), (2.0, 2.1, 0.7, 0.42, 0.41),
                                                         (1.5, 2.3, 0.6, 0.41, 0.37)]):
        for model, ret, rmse in (("q-T1", t1, rmse1), ("q-T3-lam0.8", t3, rmse3), ("gru4rec", gru, None)):
            rows.append({"dataset": "w", "protocol": "online", "model": model, "seed": seed, "split": "test",
                         "metric": "return", "value": ret})
            if rmse is not None:
                rows.append({"dataset": "w", "protocol": "event", "model": model, "seed": seed, "split": "test",
                             "metric": "value/rmse", "value": rmse})
                rows.append({"dataset": "w", "protocol": "event", "model": model, "seed": seed, "split": "valid",
                             "metric": "value/rmse", "value": 9.0})          # validation rows are not test figures
    rows.append({"dataset": "w", "protocol": "online", "model": "q-T3-lam0.8", "seed": 7, "split": "test",
                 "metric": "return", "value": 50.0})                        # a seed its baseline did not run
    table = od.differences(pd.DataFrame(rows)).set_index(["model", "baseline", "metric"])
    d = np.array([0.5, 0.1, 0.8])                      # q-T3 - q-T1 per seed; t(0.975, 2) = 4.302653
    half = 4.302653 * d.std(ddof=1) / np.sqrt(3)
    got = table.loc[("q-T3-lam0.8", "q-T1", "return")]
    assert got["n_seeds"] == 3 and got["diff"] == pytest.approx(d.mean())
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half), rel=1e-6)
    assert table.loc[("q-T3-lam0.8", "q-T1", "value/rmse"), "diff"] == pytest.approx(np.mean([-0.02, -0.01, -0.04]))
    assert table.loc[("q-T1", "gru4rec", "return"), "diff"] == pytest.approx(np.mean([0.5, 1.3, 0.9]))
    assert ("gru4rec", "q-T1", "return") not in table.index


def test_online_differences_pair_a_dueling_model_with_both_one_step_recipes_and_others_with_the_plain_one():
    from benchmarks import online_differences as od
    pairs = set(od.pairs(["gru4rec", "q-T1", "q-T1-duel", "q-T3-lam0.5", "q-T20-K3-lam1-duel", "static-list", "random"],
                         ("value/rmse",)))
    assert {("q-T20-K3-lam1-duel", "q-T1", "return"), ("q-T20-K3-lam1-duel", "q-T1-duel", "return"),
            ("q-T3-lam0.5", "q-T1", "return"), ("q-T1-duel", "q-T1", "return")} <= pairs
    assert ("q-T3-lam0.5", "q-T1-duel", "return") not in pairs
    assert {("q-T1", "static-list", "return"), ("q-T1-duel", "gru4rec", "return")} <= pairs
    assert not {p for p in pairs if p[1] == "random" or p[0] in ("gru4rec", "static-list")}


def test_paired_tables_pair_against_the_named_baseline_or_the_best_published_one(tmp_path):
    """compare.paired_tables reads each run's per_user.csv; by default the baseline is the published
    one best on validation, with --baseline the one named (here a model no published recipe names)."""
    from benchmarks.compare import Dataset, Run, paired_tables
    ds = Dataset("d", "loo", None)
    per_user = {"sasrec": [0.2, 0.4], "gru4rec": [0.1, 0.1], "anchor": [0.3, 0.3], "mine": [0.5, 0.5]}
    runs = []
    for model, values in per_user.items():
        run_dir = tmp_path / model / "seed0"
        run_dir.mkdir(parents=True)
        pd.DataFrame({"event": [7, 8], "loo": values, "loo-unmasked": values}).to_csv(run_dir / "per_user.csv", index=False)
        runs.append(Run(ds, model, 0, [], run_dir))
    valid = {"sasrec": 0.3, "gru4rec": 0.2, "anchor": 0.9, "mine": 0.1}
    summary = pd.DataFrame([{"dataset": "d", "protocol": "loo", "metric": "valid/NDCG@10", "model": m, "mean": v}
                            for m, v in valid.items()])
    by_default, _ = paired_tables(runs, summary)
    assert set(by_default["baseline"]) == {"sasrec"}
    mine = by_default[(by_default["model"] == "mine") & (by_default["protocol"] == "loo")]
    assert mine["diff"].item() == pytest.approx(0.5 - 0.3)
    named, _ = paired_tables(runs, summary, ("anchor",))
    assert set(named["baseline"]) == {"anchor"} and "anchor" not in set(named["model"])
    mine = named[(named["model"] == "mine") & (named["protocol"] == "loo")]
    assert mine["diff"].item() == pytest.approx(0.5 - 0.3) and mine["ci_low"].item() == pytest.approx(0.2)
