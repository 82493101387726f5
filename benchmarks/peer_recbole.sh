#!/usr/bin/env bash
# One training epoch of RecBole 1.2.1's GRU4Rec and SASRec beside ours, on the same data and settings
# (MovieLens leave-one-out, every training prefix a sample, histories of 50 items, hidden 64, batch
# 512, cross-entropy over all items, 2 threads, one run after the other), and the epoch-time ratios.
#
#   benchmarks/peer_recbole.sh                  # MovieLens-100K, RecBole's GRU4Rec and SASRec
#   benchmarks/peer_recbole.sh 1m GRU4Rec       # MovieLens-1M, GRU4Rec only (its SASRec epoch takes ~40 min)
#
# Ours, three ways: the gru4rec configuration of benchmarks/compare.py on 50-item windows (the window
# path, RecBole's own histories), the same with whole-session states (pool.state_len 0, the session
# path), and the next-item SASRec (model.encoder sasrec) with whole-session states.
#
# RecBole is never a dependency of this project: it gets a virtual environment of its own
# (data/venv-recbole, built once, a few minutes). On today's stack it needs numpy<2, setuptools with
# pkg_resources (<80), scipy<1.14, and TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 to read its own checkpoints.
# Our side is `python train_offline.py` with the gru4rec overrides of benchmarks/compare.py.
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-100k}
case "$which" in 100k|1m) ;; *) echo "error: the data set is 100k or 1m, not '$which'" >&2; exit 2 ;; esac
venv=data/venv-recbole
export OMP_NUM_THREADS=2 TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import recbole" 2>/dev/null; then
  echo "building $venv with RecBole 1.2.1 (once) ..."
  python -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.13.0 "numpy<2" "setuptools<80" "scipy<1.14" recbole==1.2.1
fi

# ---- ours: one epoch of each configuration (the pool, and the MovieLens file, are made first)
config=configs/movielens-loo.yaml
[ "$which" = 1m ] && config=configs/movielens-1m-loo.yaml
python replay_buffer.py --config "$config" > /dev/null
models=${2:-GRU4Rec,SASRec}
variants=("gru4rec-window50:pool.state_len=50" "gru4rec-session:pool.state_len=0")
[[ ",$models," == *,SASRec,* ]] && variants+=("sasrec-session:pool.state_len=0 model.encoder=sasrec")
timings=""
for variant in "${variants[@]}"; do
  name=${variant%%:*}
  sets=(--set pool.horizon=1 --set model.ssl_steps=1 --set train.alpha=0.0 --set train.batch_size=512
        --set train.epochs=1 --set train.threads=2 --set "train.run_dir=runs/peer-recbole-$which-$name")
  for kv in ${variant#*:}; do sets+=(--set "$kv"); done
  python train_offline.py --config "$config" "${sets[@]}" > /dev/null 2>&1 ||
    { echo "error: our training failed; run it to see why: python train_offline.py --config $config ${sets[*]}" >&2; exit 1; }
  seconds=$(python -c "import csv, sys; print(list(csv.DictReader(open(sys.argv[1])))[-1]['seconds'])" \
            "runs/peer-recbole-$which-$name/metrics.csv")
  timings="$timings $name=$seconds"
done
inter=data/downloads/ml-$which.inter

# ---- RecBole: its own data pipeline on the same file, then one timed training epoch per model
"$venv/bin/python" -W ignore - "$inter" "$models" $timings <<'EOF'
import logging, os, shutil, sys, tempfile, time

import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, get_trainer, init_seed

inter, models = os.path.abspath(sys.argv[1]), sys.argv[2].split(",")
ours = {name: float(seconds) for name, seconds in (arg.split("=") for arg in sys.argv[3:])}
torch.set_num_threads(2)
logging.disable(logging.WARNING)
name = os.path.basename(inter)[:-len(".inter")]
root = tempfile.mkdtemp()
os.chdir(root)                                  # RecBole writes log/ and log_tensorboard/ where it runs
os.makedirs(os.path.join(root, name))
shutil.copy(inter, os.path.join(root, name, name + ".inter"))
settings = {
    "data_path": root, "checkpoint_dir": os.path.join(root, "saved"), "use_gpu": False, "seed": 0,
    "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]}, "MAX_ITEM_LIST_LENGTH": 50,
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
    "train_neg_sample_args": None, "loss_type": "CE", "train_batch_size": 512, "epochs": 1,
    "embedding_size": 64, "hidden_size": 64, "n_layers": 2, "n_heads": 2, "inner_size": 256,
    "show_progress": False, "state": "ERROR",
}
print(f"one training epoch on {name}, 2 threads")
for ours_name, seconds in ours.items():
    print(f"  ours    {ours_name:18s} {seconds:7.1f} s")
for model_name in models:
    cfg = Config(model=model_name, dataset=name, config_dict=settings)
    if model_name == "GRU4Rec":
        cfg["n_layers"] = 1                     # RecBole's GRU4Rec default; 2 is SASRec's block count
    init_seed(cfg["seed"], cfg["reproducibility"])
    train_data, _, _ = data_preparation(cfg, create_dataset(cfg))
    model = get_model(cfg["model"])(cfg, train_data.dataset)
    trainer = get_trainer(cfg["MODEL_TYPE"], cfg["model"])(cfg, model)
    start = time.perf_counter()
    trainer._train_epoch(train_data, epoch_idx=0, show_progress=False)
    seconds = time.perf_counter() - start
    ratios = ", ".join(f"{name} {seconds / ours_seconds:.2f}x" for name, ours_seconds in ours.items())
    print(f"  RecBole {model_name:18s} {seconds:7.1f} s   ours faster by: {ratios}")
shutil.rmtree(root, ignore_errors=True)
EOF
