"""train_offline.py and replay_buffer.py as a user runs them: subprocesses on a tiny config in a temp folder."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import tiny_overrides

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
    meta = json.loads((tmp / "pool" / "meta.json").read_text())
    for key in ("num_sessions", "num_items", "num_events", "num_purchases", "config_hash"):
        assert key in meta
    assert sum(meta["splits"][s]["events"] for s in ("train", "valid", "test")) == meta["num_events"]


def test_same_seed_same_numbers_and_resume_matches_uninterrupted(trained, tmp_path):
    tmp, _ = trained
    # Three epochs straight, in a fresh folder...
    run("train_offline.py", tmp=tmp_path, extra=["train.epochs=3"])
    # ...equal two epochs (the shared run) resumed for a third.
    run("train_offline.py", "--resume", tmp=tmp, extra=["train.epochs=3"])
    straight, resumed = final_metrics(tmp_path / "run"), final_metrics(tmp / "run")
    assert straight == resumed
    rows = list(csv.DictReader((tmp / "run" / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]


def test_eval_and_recommend_modes_load_without_training(trained):
    tmp, _ = trained
    before = (tmp / "run" / "last.pt").stat().st_mtime_ns
    ev = run("train_offline.py", "--mode", "eval", tmp=tmp)
    assert "test:" in ev.stdout and "top-" not in ev.stdout
    sessions = (tmp / "pool" / "session_ids.csv").read_text().split()[1:]
    rec = run("train_offline.py", "--mode", "recommend", "--user", sessions[0], tmp=tmp)
    assert f"for user {sessions[0]}" in rec.stdout and "epoch" not in rec.stdout
    items = (tmp / "pool" / "item_ids.csv").read_text().split()[1:]
    rec = run("train_offline.py", "--mode", "recommend", "--history", ",".join(items[:3]), "--set",
              "recommend.k=4", tmp=tmp)
    lines = [l for l in rec.stdout.splitlines() if l.strip()[:1].isdigit()]
    recommended = [l.split()[1] for l in lines]
    assert len(recommended) == 4 and not set(recommended) & set(items[:3])   # seen items excluded
    assert (tmp / "run" / "last.pt").stat().st_mtime_ns == before


def test_replay_buffer_script(tmp_path):
    first = run("replay_buffer.py", tmp=tmp_path)
    assert "sessions" in first.stdout and (tmp_path / "pool" / "meta.json").is_file()
    assert "up to date" in run("replay_buffer.py", tmp=tmp_path).stdout


def assert_clean_failure(proc, message):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert lines[-1].startswith("error: ") and message in lines[-1], proc.stderr


@pytest.mark.parametrize("extra,args,message", [
    (["train.epoch=3"], [], "unknown config key 'train.epoch'"),
    (["data.source=parquet"], [], "unknown data.source 'parquet'"),
    (["data.source=csv", "data.path=nowhere.csv"], [], "not found"),
    (["data.min_session_len=1000"], [], "no events left after filtering"),
    ([], ["--config", "missing.yaml"], "config file missing.yaml not found"),
])
def test_bad_input_fails_cleanly_and_writes_nothing(tmp_path, extra, args, message):
    proc = run("train_offline.py", *args, tmp=tmp_path, extra=extra, check=False)
    assert_clean_failure(proc, message)
    assert not (tmp_path / "pool").exists() and not (tmp_path / "run").exists()
    assert not list(tmp_path.glob(".pool*")), "a half-written pool was left behind"


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
