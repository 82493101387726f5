"""train.tensorboard: every metrics.csv row as TensorBoard scalars, and one clear line without the package."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import tiny_overrides
from seqrec.running import runs
from seqrec.running.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_rows_become_scalars_at_their_epoch(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    writer = runs.tensorboard_writer(tmp_path)
    runs.write_scalars(writer, {"epoch": 1, "step": 10, "loss": 2.5, "valid/ssl/purchase/NDCG@10": 0.2,
                                "valid/value/true_r2": float("nan")})
    runs.write_scalars(writer, {"epoch": 2, "step": 20, "loss": 2.0, "valid/ssl/purchase/NDCG@10": 0.25,
                                "valid/value/true_r2": 0.1})
    writer.close()
    events = EventAccumulator(str(tmp_path)).Reload()
    assert {"loss", "step", "valid/ssl/purchase/NDCG@10", "valid/value/true_r2"} <= set(events.Tags()["scalars"])
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 2.5), (2, 2.0)]
    assert [e.step for e in events.Scalars("valid/value/true_r2")] == [2]           # NaN left out


def test_a_missing_package_is_named_with_the_command_that_installs_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)                # import fails
    with pytest.raises(UserError, match="pip install tensorboard"):
        runs.summary_writer_class()


def test_training_refuses_before_any_work_without_the_package(tmp_path):
    shim = tmp_path / "shim" / "tensorboard"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('tensorboard is not installed here')\n")
    cmd = [sys.executable, str(ROOT / "train_offline.py")]
    for o in tiny_overrides(tmp_path) + ["train.tensorboard=true"]:
        cmd += ["--set", o]
    env = {**os.environ, "PYTHONPATH": str(shim.parent)}
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: train.tensorboard needs the tensorboard package")
    assert not (tmp_path / "pool").exists() and not (tmp_path / "run").exists()
