"""train_offline.py and replay_buffer.py as a user runs them: subprocesses on a tiny config in a temp folder."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import tiny_overrides, with_root_on_path

ROOT = Path(__file__).resolve().parents[1]


def run(script, *args, tmp, extra=(), check=True):
    cmd = [sys.executable, str(ROOT / script)]
    for o in tiny_overrides(tmp) + list(extra):
        cmd += ["--set", o]
    proc = subprocess.run(cmd + list(args), cwd=tmp, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def final_metrics(run_dir):
    return json.loads((run_dir / "final.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 2-epoch run shared by the tests below."""
    tmp = tmp_path_factory.mktemp("run")
    proc = run("train_offline.py", tmp=tmp)
    return tmp, proc


def test_train_writes_everything_and_recommends(trained):
    tmp, proc = trained
    run_dir = tmp / "run"
    for name in ("config.yaml", "metrics.csv", "best.pt", "last.pt", "final.json", "curves.png"):
        assert (run_dir / name).is_file(), name
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert "valid/ssl/purchase/NDCG@10" in rows[0] and "valid/q/click/HR@5" in rows[0]
    final = final_metrics(run_dir)
    assert final["head"] == "ssl"
    for key in ("click/NDCG@10", "purchase/HR@20", "click/HR@5", "purchase/NDCG@20"):
        assert 0.0 <= final[key] <= 1.0
        assert final["heads"]["q"][key] is not None
    assert "test:" in proc.stdout and "validation" in proc.stdout
    assert "top-10 for user" in proc.stdout
    # The value function against returns: every figure, per epoch and at the end.
    value = final["value"]
    assert set(value) == {"rmse", "bias", "spearman", "r2", "baseline_rmse", "n", "n_held_out", "true_r2",
                          "true_n"}
    assert value["n"] == json.loads((tmp / "pool" / "meta.json").read_text())["splits"]["test"]["events"]
    assert value["rmse"] > 0 and value["baseline_rmse"] > 0 and 0 < value["true_n"] <= value["n"]
    assert "valid/value/rmse" in rows[0] and "valid/value/true_r2" in rows[0]
    assert "value of Q(s, a) against realized returns" in proc.stdout
    meta = json.loads((tmp / "pool" / "meta.json").read_text())
    for key in ("num_sessions", "num_items", "num_events", "num_purchases", "config_hash"):
        assert key in meta
    assert sum(meta["splits"][s]["events"] for s in ("train", "valid", "test")) == meta["num_events"]


def test_same_seed_same_numbers_and_resume_matches_uninterrupted(trained, tmp_path):
    tmp, _ = trained
    # Three epochs straight, in a fresh folder...
    run("train_offline.py", tmp=tmp_path, extra=["train.epochs=3"])
    # ...equal two epochs (the shared run) resumed for a third, from where its checkpoint stood.
    ckpt = torch.load(tmp / "run" / "last.pt", weights_only=True)
    proc = run("train_offline.py", "--resume", tmp=tmp, extra=["train.epochs=3"])
    assert ckpt["epoch"] == 2 and ckpt["step"] > 0
    assert f"after 2 epochs and 0 batches (step {ckpt['step']})" in proc.stdout, proc.stdout
    straight, resumed = final_metrics(tmp_path / "run"), final_metrics(tmp / "run")
    assert straight == resumed
    rows = list(csv.DictReader((tmp / "run" / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]


def test_eval_and_recommend_modes_load_without_training(trained):
    tmp, _ = trained
    before = (tmp / "run" / "last.pt").stat().st_mtime_ns
    ev = run("train_offline.py", "--mode", "eval", tmp=tmp)
    assert "test:" in ev.stdout and "top-" not in ev.stdout
    # eval's test table gives the figures training wrote to final.json for the same checkpoint
    final, table = final_metrics(tmp / "run"), ev.stdout.split("test:")[1].splitlines()
    columns = table[1].split()[2:]                                   # head, events, then HR@5 ... MRR
    rows = [line.split() for line in table[2:] if line.split()[:1] and line.split()[0] in final["heads"]]
    assert len(rows) == 3 * len(final["heads"]) and "MRR" in columns          # all, click, purchase
    for head, kind, *values in rows:
        for column, value in zip(columns, values):
            assert float(value) == pytest.approx(final["heads"][head][f"{kind}/{column}"], abs=5e-5), (head, kind, column)
    sessions = (tmp / "pool" / "session_ids.csv").read_text().split()[1:]
    rec = run("train_offline.py", "--mode", "recommend", "--user", sessions[0], tmp=tmp)
    assert f"for user {sessions[0]}" in rec.stdout and "epoch" not in rec.stdout
    items = (tmp / "pool" / "item_ids.csv").read_text().split()[1:]
    rec = run("train_offline.py", "--mode", "recommend", "--history", ",".join(items[:3]), "--set",
              "recommend.k=4", tmp=tmp)
    lines = [l for l in rec.stdout.splitlines() if l.strip()[:1].isdigit()]
    recommended = [l.split(None, 2)[2] for l in lines]                  # rank, score, item (titles hold spaces)
    assert len(recommended) == 4 and not set(recommended) & set(items[:3])   # seen items excluded
    assert (tmp / "run" / "last.pt").stat().st_mtime_ns == before


def test_recommend_all_writes_what_recommend_user_prints(trained):
    tmp, _ = trained
    out = tmp / "recs" / "all.csv"
    proc = run("train_offline.py", "--mode", "recommend", "--all", "--out", str(out), "--k", "4", tmp=tmp)
    assert f"rows in {out}" in proc.stdout
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["session_id", "rank", "item_id", "score"]
    sessions = (tmp / "pool" / "session_ids.csv").read_text().split()[1:]
    filtered = (tmp / "pool" / "filtered_sessions.csv").read_text().split()[1:]      # id,filter lines
    assert filtered and f"{len(filtered):,} sessions of the log were filtered out" in proc.stderr
    assert [r["session_id"] for r in rows[::4]] == sessions + [line.split(",")[0] for line in filtered]
    assert len(rows) == 4 * (len(sessions) + len(filtered))
    assert all(r["score"] == "" for r in rows[4 * len(sessions):])      # popularity: no model score
    for user in (sessions[0], sessions[len(sessions) // 2], sessions[-1]):
        printed = run("train_offline.py", "--mode", "recommend", "--user", user, "--k", "4", tmp=tmp).stdout
        lines = [l.split(None, 2) for l in printed.splitlines() if l.strip()[:1].isdigit()]
        mine = [r for r in rows if r["session_id"] == user]
        assert [r["item_id"] for r in mine] == [item for _, _, item in lines]
        assert [float(r["score"]) for r in mine] == pytest.approx([float(score) for _, score, _ in lines], abs=1e-4)
    run("train_offline.py", "--mode", "recommend", "--all", "--split", "test", tmp=tmp)
    test_rows = list(csv.DictReader((tmp / "run" / "recommendations.csv").open()))
    assert {r["session_id"] for r in test_rows} < set(sessions) and test_rows


@pytest.mark.parametrize("args,message", [
    (["--mode", "eval", "--set", "model.encoder=sasrec"],
     "model.encoder is 'sasrec' here but the checkpoint's network was trained with 'gru'"),
    (["--mode", "recommend", "--set", "pool.state_len=10"], "pool.state_len is 10 here but"),
    (["--mode", "recommend", "--all", "--user", "x"], "--all recommends for every session"),
    (["--mode", "eval", "--out", "x.csv"], "--out and --split go with --all"),
    (["--mode", "recommend", "--all", "--k", "0"], "--k must be at least 1"),
])
def test_overrides_that_cannot_act_on_a_saved_run_fail_cleanly(trained, args, message):
    tmp, _ = trained
    assert_clean_failure(run("train_offline.py", *args, tmp=tmp, check=False), message)


def test_online_eval_checks_its_checkpoint_before_simulating(tmp_path):
    proc = run("online_eval.py", "--checkpoint", "missing.pt", tmp=tmp_path, check=False)
    assert_clean_failure(proc, "no checkpoint at missing.pt")
    assert not (tmp_path / "pool").exists(), "a pool was built before the missing checkpoint was noticed"


def test_replay_buffer_script(tmp_path):
    first = run("replay_buffer.py", tmp=tmp_path)
    assert "sessions" in first.stdout and (tmp_path / "pool" / "meta.json").is_file()
    assert "up to date" in run("replay_buffer.py", tmp=tmp_path).stdout


def assert_clean_failure(proc, message, folder=None):
    """Bad input as the README promises: exit status 2, no traceback, one `error: ...` line on stderr
    (the last) holding `message`, and in `folder` (if given) no temporary a writer left behind."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr
    assert message in errors[0], proc.stderr
    if folder is not None:
        leftovers = [p for p in Path(folder).rglob(".*.pid*")]
        assert not leftovers, leftovers


@pytest.mark.parametrize("extra,args,message", [
    (["train.epoch=3"], [], "unknown config key 'train.epoch'"),
    (["data.source=orc"], [], "unknown data.source 'orc'"),
    (["data.source=csv", "data.path=nowhere.csv"], [], "not found"),
    (["data.min_session_len=1000"], [], "no events left after filtering"),
    ([], ["--config", "missing.yaml"], "config file missing.yaml not found"),
    (["train.epochs=-1"], [], "train.epochs must be at least 1, got -1"),
    (["train.lr=.nan"], [], "config key 'train.lr' needs a finite number"),
])
def test_bad_input_fails_cleanly_and_writes_nothing(tmp_path, extra, args, message):
    proc = run("train_offline.py", *args, tmp=tmp_path, extra=extra, check=False)
    assert_clean_failure(proc, message)
    assert not (tmp_path / "pool").exists() and not (tmp_path / "run").exists()
    assert not list(tmp_path.glob(".pool*")), "a half-written pool was left behind"


def test_rewards_beyond_float32_fail_cleanly(tmp_path):
    (tmp_path / "log.csv").write_text("session_id,item_id,timestamp,reward\n1,2,3,0.2\n1,3,4,1e308\n")
    proc = run("train_offline.py", tmp=tmp_path, extra=["data.source=csv", "data.path=log.csv"], check=False)
    assert_clean_failure(proc, "column 'reward' has a value that is not a finite 32-bit number (1e+308)")
    assert not (tmp_path / "pool").exists() and not (tmp_path / "run").exists()


def test_wrong_columns_fail_cleanly(tmp_path):
    (tmp_path / "log.csv").write_text("sid,item_id,timestamp\n1,2,3\n")
    proc = run("replay_buffer.py", tmp=tmp_path, extra=["data.source=csv", "data.path=log.csv"], check=False)
    assert_clean_failure(proc, "no column 'session_id'")


def test_unknown_user_and_item_fail_cleanly(trained):
    tmp, _ = trained
    assert_clean_failure(run("train_offline.py", "--mode", "recommend", "--user", "no-such-user", tmp=tmp,
                             check=False), "unknown user 'no-such-user'")
    assert_clean_failure(run("train_offline.py", "--mode", "recommend", "--history", "nope", tmp=tmp,
                             check=False), "unknown item 'nope'")


def test_missing_checkpoint_fails_cleanly(tmp_path):
    assert_clean_failure(run("train_offline.py", "--mode", "eval", tmp=tmp_path, check=False), "no checkpoint")


def test_online_eval_and_improve_over_time(trained):
    tmp, _ = trained
    proc = run("online_eval.py", tmp=tmp, extra=["online.sessions=200", "online.rounds=1",
                                                  "online.round_sessions=100"])
    table = list(csv.DictReader((tmp / "run" / "online.csv").open()))
    names = [r["policy"] for r in table]
    assert names[:5] == ["random", "popular", "static-list", "logging", "oracle"]
    assert any(n.endswith(":ssl") for n in names) and any(n.endswith(":q") for n in names)
    oracle = next(r for r in table if r["policy"] == "oracle")
    assert float(oracle["of_oracle"]) == 1.0
    rounds = list(csv.DictReader((tmp / "run" / "improve.csv").open()))
    assert [r["round"] for r in rounds] == ["0", "1"]
    assert int(rounds[1]["pool_events"]) > int(rounds[0]["pool_events"])
    assert (tmp / "run" / "improve.png").is_file() and "round 1" in proc.stdout


def test_online_eval_needs_the_simulator(tmp_path):
    (tmp_path / "log.csv").write_text("session_id,item_id,timestamp\n" + "".join(
        f"{s},{i},{i}\n" for s in range(30) for i in range(3)))
    proc = run("online_eval.py", tmp=tmp_path, extra=["data.source=csv", "data.path=log.csv"], check=False)
    assert_clean_failure(proc, "online evaluation needs a world's own data")


def test_compare_quick_writes_the_summary(tmp_path):
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "benchmarks.compare", "--quick", "--data", "simulated",
           "--models", "gru4rec,full-T3-lam0.8", "--out", str(out), "--runs", str(tmp_path / "runs"),
           "--ope", "--ope-out", str(out / "ope"), "--ope-draws", "5"]
    for o in tiny_overrides(tmp_path) + ["train.epochs=1", "online.sessions=100"]:
        if not o.startswith(("train.run_dir", "train.threads")):
            cmd += ["--set", o]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=with_root_on_path())
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert list(rows[0]) == ["dataset", "protocol", "model", "metric", "mean", "std", "n_seeds"]
    keys = {(r["protocol"], r["model"], r["metric"]) for r in rows}
    for key in [("event", "gru4rec", "purchase/NDCG@10"), ("event", "full-T3-lam0.8", "click/HR@10"),
                ("event", "popularity", "purchase/NDCG@10"), ("online", "oracle", "return"),
                ("online", "full-T3-lam0.8", "of_oracle"), ("event", "gru4rec", "valid/purchase/NDCG@10")]:
        assert key in keys, key
    for name in ("results.md", "lambda.png", "horizon.png", "curves.png"):
        assert (out / name).is_file(), name
    seeds = list((tmp_path / "runs").rglob("seed0"))
    assert len(seeds) == 2 and all((d / "collected.csv").is_file() for d in seeds)   # kept for a later session
    # --ope: every history-only policy, every estimator, an interval and the truth
    ope = list(csv.DictReader((out / "ope" / "ope.csv").open()))
    assert list(ope[0]) == ["dataset", "policy", "estimator", "estimate", "ci_low", "ci_high", "truth"]
    assert {r["policy"] for r in ope} == {"random", "logging", "popular", "gru4rec", "full-T3-lam0.8"}
    ips = [r for r in ope if r["estimator"] == "cascade-snips"]
    assert len(ips) == 5 and all(float(r["ci_low"]) <= float(r["estimate"]) <= float(r["ci_high"]) for r in ips)
    assessment = {r["estimator"]: r for r in csv.DictReader((out / "ope" / "ope-assessment.csv").open())}
    assert {"ips", "sequential", "dm", "cascade-dr", "fqe", "offline-click-ndcg@10"} <= set(assessment)
    fqe = [r for r in ope if r["estimator"] == "fqe"]
    assert len(fqe) == 5 and all(float(r["ci_low"]) <= float(r["estimate"]) <= float(r["ci_high"]) for r in fqe)
    assert assessment["ips"]["n_policies"] == "5" and (out / "ope" / "ope.png").is_file()


def test_compare_baselines_only_trains_nothing(tmp_path):
    out = tmp_path / "baselines"
    cmd = [sys.executable, "-m", "benchmarks.compare", "--quick", "--data", "simulated", "--baselines-only",
           "--out", str(out), "--runs", str(tmp_path / "runs")]
    for o in tiny_overrides(tmp_path) + ["online.sessions=100"]:
        if not o.startswith(("train.run_dir", "train.threads")):
            cmd += ["--set", o]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=with_root_on_path())
    assert proc.returncode == 0, proc.stderr[-3000:]
    models = {r["model"] for r in csv.DictReader((out / "summary.csv").open())}
    assert models == {"popularity", "random", "popular", "static-list", "logging", "oracle", "lookahead-oracle",
                      "posterior-oracle"}
    kept = [p.relative_to(tmp_path / "runs") for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert kept and all(p.parent.name == "baselines" and p.suffix == ".csv" for p in kept), kept   # no model trained


def test_patience_stops_training_and_resume_does_not_train_on(tmp_path):
    """A learning rate too small to move the scores: epoch 1 is the best, epoch 2 is no better, so
    train.patience 1 stops after 2 of 5 epochs; resuming then trains nothing more."""
    extra = ["train.epochs=5", "train.patience=1", "train.lr=1e-12"]
    proc = run("train_offline.py", tmp=tmp_path, extra=extra)
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert "stopped early" in proc.stdout and "after epoch 1 (train.patience)" in proc.stdout
    assert final_metrics(tmp_path / "run")["best_epoch"] == 1
    proc = run("train_offline.py", "--resume", tmp=tmp_path, extra=extra)
    assert len(list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))) == 2
    assert "stopped early" in proc.stdout


def test_patience_off_trains_every_epoch():
    from seqrec.running.learner import patience_spent
    best = {"epoch": 0, "value": 1.0}
    assert not patience_spent(10, best, 0)             # 0 = off
    assert not patience_spent(2, best, 2) and patience_spent(3, best, 2)   # epochs 2 and 3 no better than 1
