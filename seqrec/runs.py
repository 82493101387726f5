"""One checkpoint dict (model, target, optimizer, step, epoch, config, RNG state), written atomically."""
from __future__ import annotations

from pathlib import Path

import torch

from seqrec.atomic import atomic_write
from seqrec.errors import UserError


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
