"""A user's own log, as a practitioner brings it: nothing the project did not create is moved or
deleted, a checkpoint is never applied to another item vocabulary, unwritable places fail in one line
before any work, files get the user's umask, and recommendations answer for every session of the log
in the log's own ids."""
import builtins
from collections import Counter
import errno
import io
import os
import runpy
import shutil
import stat
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import tiny_overrides
from model import SeqRecQ
from replay_buffer import Pool
from seqrec.running.atomic import atomic_write_text, remove_stale_temporaries
from seqrec.running.errors import UserError
from seqrec.running.recommend import Recommender
from test_train_integration import ROOT, assert_clean_failure, run

CSV = ["data.source=csv", "data.path=log.csv", "data.min_item_count=1", "eval.select_metric=click/NDCG@10"]


def write_log(folder, sessions=60, items=12):
    """A small CSV log: `sessions` sessions of 4 events over `items` items with 8-digit ids, and session
    5000 of one event, which data.min_session_len (2) filters out."""
    rows = [(1000 + s, 10_000_000 + (s * 7 + j * 3) % items, 100 * s + j) for s in range(sessions) for j in range(4)]
    rows.append((5000, 10_000_001, 10 ** 6))
    pd.DataFrame(rows, columns=["session_id", "item_id", "timestamp"]).to_csv(folder / "log.csv", index=False)


@pytest.fixture
def script(monkeypatch, capsys):
    """Run an entry script as a user runs it (test_train_integration.run's arguments), but in this
    process: the same argv, folder, stdout, stderr and exit status, without a second start of Python
    and torch for each of this file's many runs."""
    def run_here(name, *args, tmp, extra=(), check=True):
        argv = [name, *args]
        for o in tiny_overrides(tmp) + list(extra):
            argv += ["--set", o]
        monkeypatch.setattr(sys, "argv", argv)
        monkeypatch.chdir(tmp)
        threads, code = torch.get_num_threads(), 0
        try:
            runpy.run_path(str(ROOT / name), run_name="__main__")
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        finally:
            torch.set_num_threads(threads)                        # the script sets train.threads
        out = capsys.readouterr()
        proc = subprocess.CompletedProcess(argv, code, out.out, out.err)
        if check and code != 0:
            raise AssertionError(f"{name} failed ({code}):\n{out.err[-3000:]}")
        return proc
    return run_here


# ------------------------------------------------------------------------------------------------
# Never move or delete what the project did not create
# ------------------------------------------------------------------------------------------------
def test_a_pool_dir_that_names_a_users_file_is_refused_and_the_file_kept(tmp_path, script):
    write_log(tmp_path)
    (tmp_path / "mine.csv").write_text("precious\n")
    proc = script("replay_buffer.py", tmp=tmp_path, extra=CSV + ["pool.dir=mine.csv"], check=False)
    assert_clean_failure(proc, "mine.csv exists and is not a folder", folder=tmp_path)
    assert (tmp_path / "mine.csv").read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv", "mine.csv"]


def test_a_pool_dir_that_names_a_users_folder_is_refused_and_left_alone(tmp_path, script):
    write_log(tmp_path)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_text("x")
    proc = script("train_offline.py", tmp=tmp_path, extra=CSV + ["pool.dir=photos"], check=False)
    assert_clean_failure(proc, "photos is a folder this project did not write", folder=tmp_path)
    assert [p.name for p in (tmp_path / "photos").iterdir()] == ["a.jpg"]
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.mark.parametrize("make", ["file", "folder"])
def test_a_run_dir_that_is_not_a_run_folder_is_refused_before_any_work(tmp_path, script, make):
    write_log(tmp_path)
    if make == "file":
        (tmp_path / "notes.txt").write_text("mine\n")
        target, message = "notes.txt", "train.run_dir notes.txt is a file"
    else:
        (tmp_path / "docs").mkdir()
        (tmp_path / "docs" / "config.yaml").write_text("mine: 1\n")     # a config.yaml of the user's
        target, message = "docs", "train.run_dir docs is a folder this project did not write"
    proc = script("train_offline.py", tmp=tmp_path, extra=CSV + [f"train.run_dir={target}"], check=False)
    assert_clean_failure(proc, message, folder=tmp_path)
    assert not (tmp_path / "pool").exists(), "refused before the pool was built"
    if make == "folder":
        assert (tmp_path / "docs" / "config.yaml").read_text() == "mine: 1\n"


def test_only_our_own_temporaries_of_dead_writers_are_removed(tmp_path):
    target = tmp_path / "final.json"
    dead = 2 ** 22 + 12345                                           # above pid_max's default: no such process
    ours = [tmp_path / f".final.json.pid{dead}.ab_c9.tmp", tmp_path / f".final.json.pid{dead}.old"]
    users = [tmp_path / f".final.json.pid{dead}.backup", tmp_path / f".final.json.pid{dead}.ab.tmp.keep",
             tmp_path / ".final.json.pidXY.old"]
    for path in ours + users:
        path.write_text("x")
    remove_stale_temporaries(target)
    assert [p.exists() for p in ours] == [False, False]
    assert all(p.exists() for p in users)


# ------------------------------------------------------------------------------------------------
# A checkpoint knows its items
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """A run trained on log.csv (8-digit item ids), its folder and log copied by each test."""
    tmp = tmp_path_factory.mktemp("csvrun")
    write_log(tmp)
    run("train_offline.py", tmp=tmp, extra=CSV + ["train.epochs=1"])
    return tmp


@pytest.fixture
def edited_run(csv_run, tmp_path):
    """The trained run, whose log then had one item id replaced by a new one (same number of items)."""
    shutil.copytree(csv_run, tmp_path, dirs_exist_ok=True)
    log = pd.read_csv(tmp_path / "log.csv")
    log["item_id"] = log["item_id"].replace(10_000_003, 99)
    log.to_csv(tmp_path / "log.csv", index=False)
    return tmp_path


@pytest.mark.parametrize("args", [["--mode", "recommend", "--user", "1003"], ["--resume"]])    # eval: recommend's path
def test_a_changed_log_is_not_rebuilt_under_a_checkpoint_trained_on_its_pool(edited_run, script, args):
    before = (edited_run / "pool" / "meta.json").read_text()
    proc = script("train_offline.py", *args, tmp=edited_run, extra=CSV + ["train.epochs=2"], check=False)
    assert_clean_failure(proc, "is the one", folder=edited_run)
    assert (edited_run / "pool" / "meta.json").read_text() == before, "the pool was rebuilt"


@pytest.mark.parametrize("args", [["--mode", "recommend", "--all"], ["--mode", "eval"], ["--resume"]])
def test_a_pool_rebuilt_with_other_items_is_refused(edited_run, script, args):
    script("replay_buffer.py", "--force", tmp=edited_run, extra=CSV)
    proc = script("train_offline.py", *args, tmp=edited_run, extra=CSV + ["train.epochs=2"], check=False)
    assert_clean_failure(proc, "was trained on other items than the pool", folder=edited_run)
    assert not (edited_run / "run" / "recommendations.csv").exists()


def csv_run_of(edited_run):
    """The checkpoint copied from csv_run: its config still names csv_run's own pool, unchanged."""
    return edited_run / "run" / "best.pt"


def test_recommender_load_refuses_a_pool_with_other_items(edited_run, script, monkeypatch):
    script("replay_buffer.py", "--force", tmp=edited_run, extra=CSV)
    monkeypatch.chdir(edited_run)
    with pytest.raises(UserError, match="was trained on other items"):
        Recommender.load(edited_run / "run" / "best.pt", SeqRecQ, overrides=[f"pool.dir={edited_run / 'pool'}"])
    assert Recommender.load(csv_run_of(edited_run), SeqRecQ).top_k([[10_000_001]], k=2)["rank"].tolist() == [1, 2]


def test_a_pool_rebuilt_from_an_unchanged_log_is_accepted(csv_run, script, tmp_path):
    shutil.copytree(csv_run, tmp_path, dirs_exist_ok=True)
    os.utime(tmp_path / "log.csv")                                   # touched: stale, but the same items
    proc = script("train_offline.py", "--mode", "recommend", "--user", "1003", tmp=tmp_path, extra=CSV, check=False)
    assert_clean_failure(proc, "rebuild the pool yourself")
    script("replay_buffer.py", "--force", tmp=tmp_path, extra=CSV)
    proc = script("train_offline.py", "--mode", "recommend", "--user", "1003", tmp=tmp_path, extra=CSV)
    assert "for user 1003" in proc.stdout


def test_online_eval_refuses_to_rebuild_the_pool_of_its_checkpoint(tmp_path, script):
    script("train_offline.py", tmp=tmp_path, extra=["train.epochs=1"])
    proc = script("online_eval.py", tmp=tmp_path, extra=["train.epochs=1", "data.min_item_count=50", "online.sessions=20"],
               check=False)
    assert_clean_failure(proc, "is the one", folder=tmp_path)


# ------------------------------------------------------------------------------------------------
# Places that cannot be written: one line, before any work
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def read_only(monkeypatch):
    """Make every write under a folder fail as on a read-only file system (EROFS): tests run as root,
    whom chmod does not stop. Returns a function that marks a folder read-only."""
    folders = []

    def blocked(path) -> bool:
        path = os.path.abspath(os.fspath(path))
        return any(path == f or path.startswith(f + os.sep) for f in folders)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    real_open, real_os_open = builtins.open, os.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") and blocked(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and blocked(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    for name in ("mkdir", "replace", "rename", "unlink", "rmdir"):
        real = getattr(os, name)

        def guarded(path, *args, _real=real, **kwargs):
            if blocked(path):
                refuse(path)
            return _real(path, *args, **kwargs)
        monkeypatch.setattr(os, name, guarded)
    return lambda folder: folders.append(os.path.abspath(folder))


def main_exits(script, folder, *args, extra=()):
    """Run train_offline.py in this process (so the patches apply) -> (exit code, stderr)."""
    proc = script("train_offline.py", *args, tmp=folder, extra=extra, check=False)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("args", [[], ["--resume"], ["--mode", "recommend", "--all"]])
def test_a_read_only_run_dir_fails_in_one_line_naming_it(csv_run, tmp_path, script, read_only, args):
    shutil.copytree(csv_run, tmp_path, dirs_exist_ok=True)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    read_only(tmp_path / "run")
    code, err = main_exits(script, tmp_path, *args, extra=CSV + ["train.epochs=2"])
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert f"cannot write train.run_dir {tmp_path / 'run'}" in errors[0] or \
        f"cannot write {tmp_path / 'run'}" in errors[0], errors[0]
    assert "Read-only file system" in errors[0]
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before


def test_a_read_only_out_folder_fails_before_recommending(csv_run, tmp_path, script, read_only):
    shutil.copytree(csv_run, tmp_path, dirs_exist_ok=True)
    (tmp_path / "out").mkdir()
    read_only(tmp_path / "out")
    code, err = main_exits(script, tmp_path, "--mode", "recommend", "--all", "--out", "out/recs.csv",
                           extra=CSV)
    assert code == 2 and "cannot write the folder of --out out" in err and "Read-only file system" in err, err
    assert "recommending" not in err


def test_an_atomic_write_that_fails_leaves_nothing_and_says_where(tmp_path, read_only):
    read_only(tmp_path / "ro")
    with pytest.raises(UserError, match=r"cannot write .*ro.*Read-only file system"):
        atomic_write_text(tmp_path / "ro" / "final.json", "{}")


# ------------------------------------------------------------------------------------------------
# The user's umask
# ------------------------------------------------------------------------------------------------
def test_files_a_run_writes_get_the_users_umask(tmp_path):
    write_log(tmp_path)
    sets = [a for o in tiny_overrides(tmp_path) + CSV + ["train.epochs=1"] for a in ("--set", o)]
    for args in ([], ["--mode", "recommend", "--all"]):
        proc = subprocess.run([sys.executable, str(ROOT / "train_offline.py"), *sets, *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(0o022))
        assert proc.returncode == 0, proc.stderr[-2000:]
    written = [tmp_path / "pool", tmp_path / "run"] + list((tmp_path / "pool").iterdir()) + \
        list((tmp_path / "run").iterdir())
    names = {p.name for p in written}
    assert {"best.pt", "last.pt", "config.yaml", "final.json", "curves.png", "metrics.csv", "recommendations.csv",
            "meta.json", "items.npy"} <= names
    for path in written:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["items_digest"]


# ------------------------------------------------------------------------------------------------
# Recommendations as a practitioner expects them
# ------------------------------------------------------------------------------------------------
def test_a_user_the_filters_removed_is_named_as_such(csv_run, script):
    proc = script("train_offline.py", "--mode", "recommend", "--user", "5000", tmp=csv_run, extra=CSV, check=False)
    assert_clean_failure(proc, "user '5000' is in the log but was filtered out of the pool: shorter than "
                               "data.min_session_len")
    proc = script("train_offline.py", "--mode", "recommend", "--user", "6000", tmp=csv_run, extra=CSV, check=False)
    assert_clean_failure(proc, "unknown user '6000'")


def test_all_gives_every_session_of_the_log_its_rows(csv_run, script, tmp_path):
    proc = script("train_offline.py", "--mode", "recommend", "--all", "--k", "3", "--out", str(tmp_path / "recs.csv"),
               tmp=csv_run, extra=CSV)
    table = pd.read_csv(tmp_path / "recs.csv")
    assert set(table["session_id"]) == set(pd.read_csv(csv_run / "log.csv")["session_id"])
    filtered = table[table["session_id"] == 5000]
    assert list(filtered["rank"]) == [1, 2, 3] and filtered["score"].isna().all()
    pool = Pool(csv_run / "pool")                               # the most frequent training items, by a loop
    counts = Counter(int(pool.item_ids[pool.items[e] - 1]) for e in pool.events("train"))
    assert list(filtered["item_id"]) == [item for item, _ in sorted(counts.items(), key=lambda c: (-c[1], c[0]))[:3]]
    assert table[table["session_id"] != 5000]["score"].notna().all()
    assert "1 sessions of the log were filtered out of the pool" in proc.stderr


def test_unknown_items_of_a_history_are_an_error_or_skipped(csv_run, script):
    proc = script("train_offline.py", "--mode", "recommend", "--history", "10000001,424242", tmp=csv_run, extra=CSV,
               check=False)
    assert_clean_failure(proc, "unknown item '424242' in --history")
    proc = script("train_offline.py", "--mode", "recommend", "--history", "10000001,424242", tmp=csv_run,
               extra=CSV + ["recommend.unknown_items=skip"])
    assert "warning: skipped 1 item of --history the model does not know (e.g. '424242'" in proc.stderr
    assert "history of 1 items: 10000001" in proc.stdout


def test_recommender_answers_in_the_logs_own_id_type(csv_run):
    rec = Recommender.load(csv_run / "run" / "best.pt", SeqRecQ, overrides=["recommend.unknown_items=skip"])
    table = rec.top_k([[10_000_001, 424242], ["10000002"]], k=3)
    assert table["item_id"].dtype == np.int64 and set(table["item_id"]) <= set(range(10_000_000, 10_000_012))
    assert list(table["query"]) == [0, 0, 0, 1, 1, 1]
