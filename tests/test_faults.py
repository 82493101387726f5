"""Faults survived: training killed mid-epoch resumes to the same numbers; a pool writer killed
mid-write never leaves a pool a reader could take; a corrupt pool is named as such; torchrun with 2
processes equals 1 process, and the README's torchrun command runs end to end."""
import json
import os
import shutil
import socket
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import tiny_overrides
from replay_buffer import Pool
from seqrec.running.errors import UserError
from test_train_integration import ROOT, final_metrics, run


def test_sigkill_mid_epoch_then_resume_ends_like_an_uninterrupted_run(tmp_path):
    extra = ["train.epochs=3", "train.checkpoint_every=4", "sim.num_sessions=600"]
    reference = tmp_path / "reference"
    reference.mkdir()
    run("train_offline.py", tmp=reference, extra=extra)

    work = tmp_path / "killed"
    work.mkdir()
    cmd = [sys.executable, str(ROOT / "train_offline.py")]
    for o in tiny_overrides(work) + extra:
        cmd += ["--set", o]
    proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = work / "run" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (work / "run" / "final.json").exists(), "the run finished before it could be killed"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["batch"] > 0, "expected a mid-epoch checkpoint"

    resumed = run("train_offline.py", "--resume", tmp=work, extra=extra)
    assert (f"after {ckpt['epoch']} epochs and {ckpt['batch']} batches (step {ckpt['step']})" in resumed.stdout
            and ckpt["step"] > 0), resumed.stdout                    # it continued, not trained from scratch
    assert final_metrics(work / "run") == final_metrics(reference / "run")
    rows = (work / "run" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]


def _killed_during_write(tmp, *extra, after_files=2):
    """Run replay_buffer.py and SIGKILL it from inside right after it has written `after_files` arrays."""
    sets = [a for o in tiny_overrides(tmp) + list(extra) for a in ("--set", o)]
    code = (
        "import os, signal, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from seqrec.data import outofcore\n"
        "close, count = outofcore._NpyFile.close, [0]\n"
        "def dying_close(*a, **k):\n"
        "    close(*a, **k); count[0] += 1\n"
        f"    if count[0] == {after_files}: os.kill(os.getpid(), signal.SIGKILL)\n"
        "outofcore._NpyFile.close = dying_close\n"
        f"sys.argv = ['replay_buffer.py'] + {sets!r}\n"
        "import runpy; runpy.run_path(sys.argv[0] if os.path.exists(sys.argv[0]) else "
        f"{str(ROOT / 'replay_buffer.py')!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_killed_pool_writer_never_leaves_a_partial_pool(tmp_path):
    pool_dir = tmp_path / "pool"
    _killed_during_write(tmp_path)
    assert not pool_dir.exists(), "a first build killed mid-write must leave no pool at all"
    assert list(tmp_path.glob(".pool.pid*")), "expected the killed writer's temporary folder"

    first = run("replay_buffer.py", tmp=tmp_path)
    assert "building pool" in first.stdout
    assert not list(tmp_path.glob(".pool.pid*")), "the next build removes what the killed one left"
    before = Pool(pool_dir)
    items_before = np.asarray(before.items).copy()

    # Killed while rebuilding over an existing pool: the old pool stays whole and readable.
    _killed_during_write(tmp_path, "data.reward_purchase=2.0", after_files=3)
    after = Pool(pool_dir)
    assert after.meta["config_hash"] == before.meta["config_hash"]
    np.testing.assert_array_equal(np.asarray(after.items), items_before)
    assert "building pool" in run("replay_buffer.py", tmp=tmp_path, extra=["data.reward_purchase=2.0"]).stdout


@pytest.mark.parametrize("state_len", [10, 0])     # windows, and session-parallel lanes sharded over the ranks
def test_torchrun_two_processes_equal_one_process_after_one_step(tmp_path, state_len):
    pytest.importorskip("torch.distributed.run")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    extra = ["train.max_steps=1", "model.dropout=0.0", "train.batch_size=64", "device=cpu", f"pool.state_len={state_len}"]
    single, multi = tmp_path / "single", tmp_path / "multi"
    single.mkdir(), multi.mkdir()
    run("train_offline.py", tmp=single, extra=extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train_offline.py")]
    for o in tiny_overrides(multi) + extra:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, cwd=multi, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_one_step_equal(single, multi)


def test_two_nodes_over_loopback_equal_one_process_after_one_step(tmp_path):
    """`torchrun --nnodes=2 --node_rank=0|1` on one machine, one process a node, a pool.dir both read (as on a
    cluster's shared filesystem): global rank 0 builds the pool, the other node waits for it."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    extra = ["train.max_steps=1", "model.dropout=0.0", "train.batch_size=64", "device=cpu", "pool.state_len=0"]
    single, multi = tmp_path / "single", tmp_path / "multi"
    single.mkdir(), multi.mkdir()
    run("train_offline.py", tmp=single, extra=extra)
    with socket.socket() as s:                      # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sets = [w for o in tiny_overrides(multi) + extra for w in ("--set", o)]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                               f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}",
                               str(ROOT / "train_offline.py"), *sets], cwd=multi, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    assert ["test:" in out for out, _ in outputs] == [True, False], "one group of two: node 0's rank 0 alone reports"
    assert_one_step_equal(single, multi)


def assert_one_step_equal(single: Path, multi: Path) -> None:
    """The run in `multi` (several processes) trained the same first step as the one in `single`."""
    one = torch.load(single / "run" / "last.pt", weights_only=True)
    two = torch.load(multi / "run" / "last.pt", weights_only=True)
    assert one["step"] == two["step"] == 1
    # The gradients first: Adam's first moment after one step is 0.1 x the (all-reduced) gradient. Adam's first
    # step is scale-free, so the weights alone would not show a gradient off by a factor (a sum for a mean).
    first_moments = [[s["exp_avg"] for s in ckpt["optimizer"]["state"].values()] for ckpt in (one, two)]
    moment_share = 1 - one["optimizer"]["param_groups"][0]["betas"][0]      # exp_avg = (1 - beta1) * g
    assert len(first_moments[0]) == len(one["model"]), "one optimizer state per model tensor, in order"
    for name, g1, g2 in zip(one["model"], *first_moments):
        torch.testing.assert_close(g2, g1, rtol=1e-4, atol=1e-5 * g1.abs().max().item(), msg=f"gradient of {name}")
    for part in ("model", "target"):
        for (name, tensor), g in zip(one[part].items(), first_moments[0]):
            # Adam's first step moves a weight by lr * g / (|g| + 1e-8): where |g| is near that eps the move turns on
            # the gradient's last bits (one GRU weight of 768 moved 2.7e-5 on an AVX-512-FP16 machine), so weights
            # whose gradient is below 1e-6 are left to the gradient check above. atol: float sums in another order
            # move a weight by ~7e-6; a wrong gradient moves it by about the learning rate (3e-3)
            settled = g.abs() / moment_share > 1e-6
            torch.testing.assert_close(two[part][name][settled], tensor[settled], rtol=1e-5, atol=2e-5,
                                       msg=f"{part}.{name}")
    # The single process and rank 0 log the same loss: the ranks' shares add up to the global figure.
    rows = [(p / "run" / "metrics.csv").read_text().splitlines() for p in (single, multi)]
    assert len(rows[1]) == 2, "rank 0 alone writes the metrics"
    loss = [float(r[1].split(",")[3]) for r in rows]
    assert loss[0] == pytest.approx(loss[1], rel=1e-5)
    assert json.loads((multi / "run" / "final.json").read_text())["step"] == 1


def torchrun_command() -> list[str]:
    """`torchrun` as installed beside this Python (what the README runs), else the module it runs."""
    beside = os.path.join(os.path.dirname(sys.executable), "torchrun")
    found = beside if os.path.exists(beside) else shutil.which("torchrun")
    return [found] if found else [sys.executable, "-m", "torch.distributed.run"]


def test_readme_torchrun_command_runs_end_to_end(tmp_path):
    """`torchrun --nproc_per_node=2 train_offline.py` (tiny config, one epoch): rank 0 writes the whole
    run folder and prints the test metrics and recommendations; rank 1 exits cleanly after training."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    cmd = torchrun_command() + ["--nproc_per_node=2", "train_offline.py"]
    for o in tiny_overrides(tmp_path) + ["train.epochs=1", "device=cpu"]:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "run"
    for name in ("config.yaml", "metrics.csv", "best.pt", "last.pt", "final.json", "curves.png"):
        assert (run_dir / name).is_file(), name
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 2          # header + one epoch
    final = json.loads((run_dir / "final.json").read_text())
    assert final["best_epoch"] == 1 and 0.0 <= final["purchase/NDCG@10"] <= 1.0
    assert proc.stdout.count("test:") == 1 and "purchase" in proc.stdout.split("test:")[1]
    assert proc.stdout.count("top-10 for user") == 1                              # rank 0 alone recommends
    assert "Traceback" not in proc.stderr


def test_a_corrupt_pool_is_named_with_the_command_that_rebuilds_it(tmp_path):
    run("replay_buffer.py", tmp=tmp_path)
    (tmp_path / "pool" / "items.npy").write_text("not an array\n")
    proc = run("train_offline.py", tmp=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: the pool in") and "unreadable" in line and "items.npy" in line
    assert "python replay_buffer.py --force" in line
    assert not (tmp_path / "run").exists()
    assert "building pool" in run("replay_buffer.py", "--force", tmp=tmp_path).stdout
    assert Pool(tmp_path / "pool").num_items > 0


def test_pool_arrays_that_disagree_are_corrupt(tmp_path):
    run("replay_buffer.py", tmp=tmp_path)
    pool_dir = tmp_path / "pool"
    np.save(pool_dir / "items.npy", np.asarray(np.load(pool_dir / "items.npy"))[:-1])    # one event short
    with pytest.raises(UserError, match="corrupt .*differ in length.*replay_buffer.py --force"):
        Pool(pool_dir)


# What each kind of file of a run is written with: (module, call) run in a child process; the target
# already holds an older complete version, and the child is killed mid-write or just before the rename.
WRITERS = {
    "checkpoint": "from seqrec.running.runs import save_checkpoint; save_checkpoint(TARGET, {'step': VERSION, 'w': torch.ones(50000)})",
    "json": "from seqrec.running.runs import write_final; write_final(TARGET.parent, {'step': VERSION})",
    "csv": "from seqrec.running.runs import _write_rows; from seqrec.running.atomic import atomic_write; "
           "atomic_write(TARGET, lambda tmp: _write_rows(tmp, [{'epoch': VERSION, 'loss': 1.0}] * 20000))",
    "config": "from seqrec.running.config import load_config, save_config; "
              "save_config(load_config(overrides=[f'train.epochs={VERSION}']), TARGET)",
}
TARGETS = {"checkpoint": "last.pt", "json": "final.json", "csv": "metrics.csv", "config": "config.yaml"}


def _write_version(kind, target, version, die=None):
    """Write version `version` of a `kind` file at `target` in a child process; with `die`, SIGKILL it
    when the temporary file is complete and about to be renamed ('rename'), or with only its first half
    on disk ('writing': the state a kill during the write leaves)."""
    kill = "os.kill(os.getpid(), signal.SIGKILL)"
    cut = {"rename": "", "writing": "os.truncate(src, os.path.getsize(src) // 2); "}.get(die)
    patch = "" if die is None else ("import seqrec.running.atomic as a\n"
                                    f"def dying_replace(src, dst): {cut}{kill}\n"
                                    "a.os = type('os', (), {**vars(os), 'replace': staticmethod(dying_replace)})\n")
    code = (f"import os, signal, sys\nsys.path.insert(0, {str(ROOT)!r})\nimport torch\nfrom pathlib import Path\n"
            f"TARGET, VERSION = Path({str(target)!r}), {version}\n{patch}{WRITERS[kind]}\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def _version(kind, target):
    if kind == "checkpoint":
        return torch.load(target, weights_only=True)["step"]
    if kind == "json":
        return json.loads(target.read_text())["step"]
    if kind == "csv":
        rows = target.read_text().splitlines()
        assert len(rows) == 20001 and rows[-1] == rows[1], "a complete file"
        return int(rows[1].split(",")[0])
    return int(target.read_text().split("epochs: ")[1].split()[0])


@pytest.mark.parametrize("kind,die", [(kind, "writing") for kind in sorted(WRITERS)] + [("checkpoint", "rename")])
def test_a_run_file_killed_mid_write_keeps_its_last_complete_version(tmp_path, kind, die):
    target = tmp_path / TARGETS[kind]
    assert _write_version(kind, target, 1).returncode == 0
    proc = _write_version(kind, target, 2, die=die)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert _version(kind, target) == 1, "a reader sees the old file whole, never half of the new one"
    assert list(tmp_path.glob(f".{target.name}.pid*.tmp")), "the killed writer's temporary is left"
    assert _write_version(kind, target, 3).returncode == 0
    assert _version(kind, target) == 3
    assert not list(tmp_path.glob(f".{target.name}.pid*")), "the next write removes what the killed one left"
