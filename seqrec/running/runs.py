"""The run folder (`train.run_dir`): checkpoints, the metrics CSV, the saved config, final.json, the
curves, and the checks that a checkpoint fits the pool and config it is used with.

A checkpoint is one dict (model, target net, optimizer, step, epoch, batch, config, RNG state; see
learner.Learner.state), written atomically: a reader, or a run killed mid-write, never sees half of one.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import torch

from seqrec.running.atomic import atomic_write, atomic_write_text, check_writable, writing
from seqrec.running.config import Config, load_config, save_config
from seqrec.running.errors import UserError
from seqrec.running.learner import reads_exposures


RUN_MARKER = "# the resolved config of a train_offline.py run (this line marks the folder as a run folder)\n"


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------
def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; train first (python train_offline.py) "
                        f"or point --checkpoint / train.run_dir at a run")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a foreign or damaged file: say so in one line
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__}); retrain or pick another") from None


TRAINING_STATE = ("target", "optimizer", "twin_optimizer", "carry", "rng", "sums")


def inference_part(ckpt: dict) -> dict:
    """The checkpoint without what only resuming needs (the target network, the optimizers' moments:
    three times the network at a big catalogue), for testing and recommending."""
    return {k: v for k, v in ckpt.items() if k not in TRAINING_STATE}


def check_resumable(ckpt: dict, cfg: Config, pool) -> None:
    """--resume continues the same network (check_network_unchanged: keys added since the checkpoint
    count at their defaults) on the same items (check_same_items), or a UserError."""
    check_network_unchanged(cfg, ckpt)
    check_same_items(ckpt, pool.num_items, pool.items_digest, f"the pool in {pool.dir}")


def check_same_items(ckpt: dict, num_items: int, digest: str, where: str, name: str = "the checkpoint") -> None:
    """The checkpoint was trained on this item vocabulary (`num_items` items whose original ids hash to
    `digest`, preprocess.vocabulary_digest), or a UserError: its item i would be another item here.
    Checkpoints made before the digest was saved are checked by their number of items alone."""
    theirs = ckpt.get("items_digest")
    if ckpt["num_items"] != num_items or (theirs is not None and theirs != digest):
        raise UserError(f"{name} was trained on other items than {where} ({ckpt['num_items']:,} items, vocabulary "
                        f"{theirs or '?'}; here {num_items:,}, {digest}): the log or the data.* keys changed since "
                        "training, so its item ids would name other items; retrain on the data as it is now, or "
                        "restore the log it was trained on")


def check_pool_kept(ckpt: dict, pool_dir: Path, stale: str | None, name: str = "the checkpoint") -> None:
    """A UserError if the pool in `pool_dir` is the one the checkpoint was trained on but is `stale`
    (its log or data config changed): rebuilding it would replace the pool that fits the model with
    one whose item ids may not. Called before the pool is (re)built."""
    if stale is None:
        return
    try:
        meta = json.loads((Path(pool_dir) / "meta.json").read_text())
    except (OSError, ValueError):
        return                                                   # no pool (or not ours): nothing to keep
    if isinstance(meta, dict) and meta.get("config_hash") == ckpt.get("pool_hash"):
        raise UserError(f"the pool in {pool_dir} is the one {name} was trained on, but {stale} since, so it "
                        "would be rebuilt and its item ids could change; retrain on the data as it is now, restore "
                        "the log (and data.* keys) it was trained with, or rebuild the pool yourself "
                        "(python replay_buffer.py --force ...) and the items will be compared")


# What the saved network is: its architecture (model.*) and the states it was trained to read
# (pool.state_len: windows of that many items, or 0 = whole sessions).
NETWORK_KEYS = ("model", "pool.state_len")


def check_network_unchanged(cfg: Config, ckpt: dict) -> None:
    """A UserError naming the first network-defining key (NETWORK_KEYS) whose value in `cfg` differs
    from the checkpoint's: a saved network is rebuilt from its own config, so an override of one of
    these would be ignored without a word."""
    saved = load_config(base=ckpt["config"])          # keys added since the checkpoint at their defaults
    for key in NETWORK_KEYS:
        for name, ours, theirs in _leaves(key, _at(cfg.to_dict(), key), _at(saved.to_dict(), key)):
            if ours != theirs:
                raise UserError(f"{name} is {ours!r} here but the checkpoint's network was trained with {theirs!r}; "
                                f"keys that define the network ({', '.join(k + '.*' if '.' not in k else k for k in NETWORK_KEYS)}) "
                                "cannot change after training: drop the override, or train a new run")


def _at(tree: dict, key: str):
    for part in key.split("."):
        tree = tree[part]
    return tree


def _leaves(key: str, ours, theirs):
    """(dotted key, our value, the checkpoint's value) of every leaf under `key`."""
    if isinstance(ours, dict):
        for name in ours:
            yield from _leaves(f"{key}.{name}", ours[name], theirs.get(name))
    else:
        yield key, ours, theirs


def check_trainable(cfg: Config, pool) -> None:
    """The validation split can select a checkpoint by eval.select_metric, or a UserError."""
    if pool.meta["splits"]["valid"]["events"] == 0:
        raise UserError("the validation split is empty; give it a share in data.split, e.g. [0.8, 0.1, 0.1]")
    if cfg.eval.select_metric.startswith("purchase/") and pool.meta["splits"]["valid"]["purchases"] == 0:
        raise UserError("the validation split has no purchase events, so eval.select_metric "
                        f"'{cfg.eval.select_metric}' is undefined; set eval.select_metric=click/NDCG@10")
    if reads_exposures(cfg) and pool.shown_offsets is None:
        raise UserError(f"train.negatives_from=exposures and train.ssl_softmax=shown need the slates the log showed, "
                        f"but the pool in {pool.dir} has none (its log did not record them); use "
                        "train.negatives_from=uniform and train.ssl_softmax=items")


# ------------------------------------------------------------------------------------------------
# the run folder's files
# ------------------------------------------------------------------------------------------------
# A run folder holds one of these (a folder holding none, and not empty, is a user's: never written)
RUN_FILES = ("config.yaml", "metrics.csv", "last.pt", "best.pt", "final.json")


def is_run_folder(run_dir: Path) -> bool:
    """Whether `run_dir` is a run folder of this project: its config.yaml starts with RUN_MARKER, or
    it holds a checkpoint, metrics.csv or final.json (folders made before the marker)."""
    config = Path(run_dir) / "config.yaml"
    try:
        with config.open() as f:
            if f.readline() == RUN_MARKER:
                return True
    except (OSError, UnicodeDecodeError):
        pass
    return any((Path(run_dir) / name).is_file() for name in RUN_FILES[1:])


def claim_run_dir(run_dir: Path) -> None:
    """Make sure train.run_dir may be written, before any work: missing (made now), empty, or a run
    folder of ours, and writable; else a UserError naming it. Never writes into a user's folder."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"train.run_dir {run_dir} is a file, not a run folder; pick another train.run_dir "
                        "(nothing was changed)")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not is_run_folder(run_dir):
        raise UserError(f"train.run_dir {run_dir} is a folder this project did not write (no run's "
                        f"{' / '.join(RUN_FILES)}); pick another train.run_dir (nothing was changed)")
    check_writable(run_dir, "train.run_dir")


def start_run(run_dir: Path, cfg: Config, epochs_done: int | None) -> None:
    """Make the folder (claim_run_dir) and save the resolved config. A fresh run (epochs_done None)
    starts an empty metrics.csv; a resumed one drops the rows of epochs its checkpoint had not
    completed (logged, then killed before saving)."""
    claim_run_dir(run_dir)
    metrics = run_dir / "metrics.csv"
    if epochs_done is None:
        with writing(metrics):
            metrics.unlink(missing_ok=True)
    elif metrics.exists():
        rows = read_rows(metrics)
        keep = [r for r in rows if int(r["epoch"]) <= epochs_done]
        if len(keep) < len(rows):
            atomic_write(metrics, lambda tmp: _write_rows(tmp, keep))
    save_config(cfg, run_dir / "config.yaml", header=RUN_MARKER)


def append_row(path: Path, row: dict) -> None:
    """One epoch's row of metrics.csv (the header comes with the first row). A resumed run whose rows
    carry columns the file lacks (figures added since it was made) rewrites the file with them, the
    earlier rows left empty there: a CSV keeps one header."""
    new = not path.exists()
    header = list(row)
    if not new:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if set(row) - set(header):
            rows = read_rows(path) + [row]
            atomic_write(path, lambda tmp: _write_rows(tmp, rows))
            return
    with writing(path), path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, restval="")
        if new:
            writer.writeheader()
        writer.writerow(row)


def read_rows(path: Path) -> list[dict]:
    """The rows of a metrics.csv this project wrote (each with an integer `epoch`), or a UserError."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            int(row["epoch"])
    except (OSError, csv.Error, KeyError, TypeError, ValueError, UnicodeDecodeError):
        raise UserError(f"{path} is not a metrics file of this project; move it away or train without --resume") from None
    return rows


def _write_rows(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        if rows:
            columns = list(dict.fromkeys(key for r in rows for key in r))      # every row's, in order of first use
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(rows)


def summary_writer_class():
    """torch's TensorBoard SummaryWriter (train.tensorboard), or a UserError if the optional
    tensorboard package is missing: called before any work, so a run never fails at its first epoch."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("train.tensorboard needs the tensorboard package: pip install tensorboard "
                        "(or leave train.tensorboard false; metrics.csv has the same figures)") from None
    return SummaryWriter


def tensorboard_writer(run_dir: Path):
    """A SummaryWriter whose event files go into the run folder."""
    return summary_writer_class()(log_dir=str(run_dir))


def write_scalars(writer, row: dict) -> None:
    """One metrics.csv row as scalars at step `epoch` (tags as the CSV's columns; NaN left out)."""
    for key, value in row.items():
        if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
            writer.add_scalar(key, value, row["epoch"])
    writer.flush()


def write_final(run_dir: Path, final: dict) -> None:
    """final.json: test metrics of the selected head at the top level, both heads, validation."""
    atomic_write_text(run_dir / "final.json", json.dumps(_json_safe(final), indent=2) + "\n")


def plot_curves(run_dir: Path) -> None:
    from seqrec.running.plots import plot_training_curves
    plot_training_curves(run_dir / "metrics.csv", run_dir / "curves.png")


def _json_safe(x):
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    return None if isinstance(x, float) and math.isnan(x) else x
