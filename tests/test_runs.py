"""The run folder's bookkeeping (seqrec/running/runs.py): metrics.csv rows and the checks on a saved run."""
import csv

import pytest

from helpers import pool_from_sessions
from seqrec.running import runs
from seqrec.running.config import load_config
from seqrec.running.errors import UserError


def test_metrics_rows_keep_one_header_when_later_rows_bring_new_columns(tmp_path):
    path = tmp_path / "metrics.csv"
    runs.append_row(path, {"epoch": 1, "loss": 2.0})
    runs.append_row(path, {"epoch": 2, "loss": 1.5})
    runs.append_row(path, {"epoch": 3, "loss": 1.2, "valid/value/n_held_out": 7})    # a figure added since
    runs.append_row(path, {"epoch": 4, "loss": 1.1, "valid/value/n_held_out": 8})
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert [r["valid/value/n_held_out"] for r in rows] == ["", "", "7", "8"]
    assert path.read_text().count("epoch") == 1


def test_a_checkpoint_from_before_a_new_model_key_resumes(tmp_path):
    """Keys added to config.yaml since a checkpoint count at their defaults (model.v_head here), so
    --resume takes it; a changed network key or another pool does not."""
    pool = pool_from_sessions(tmp_path / "pool", [[1, 2, 3], [2, 3, 4]])
    cfg = load_config()
    saved = cfg.to_dict()
    del saved["model"]["v_head"]
    ckpt = {"config": saved, "num_items": pool.num_items}
    runs.check_resumable(ckpt, cfg, pool)
    with pytest.raises(UserError, match="model.hidden is 32 here"):
        runs.check_resumable(ckpt, load_config(overrides=["model.hidden=32"]), pool)
    with pytest.raises(UserError, match="trained on other items than the pool"):
        runs.check_resumable({**ckpt, "num_items": pool.num_items + 1}, cfg, pool)
