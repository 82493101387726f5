"""What is compared: each model as the overrides that turn config.yaml's full model into it.

compare.py trains them, tuning.py tunes them, bench.py times them; a model's recipe is written once, here.
"""
from __future__ import annotations


def one_step(**kw) -> list[str]:
    return ["pool.horizon=1", "model.ssl_steps=1"] + [f"train.{k}={v}" for k, v in kw.items()]


def multi_step(T: int, K: int, **kw) -> list[str]:
    return [f"pool.horizon={T}", f"model.ssl_steps={K}"] + [f"train.{k}={v}" for k, v in kw.items()]


MODELS: dict[str, list[str]] = {
    "gru4rec": one_step(alpha=0.0),                                   # next-item cross-entropy only
    # SQN: CE + one-step double Q, two nets in turn, its own linear Q head, no negatives
    "gru-sqn": one_step(alpha=1.0, gamma=0.5, bootstrap="swap", q_negatives=0) + ["model.q_head=linear"],
    # SNQN: SQN's one-step double Q (linear head) with 10 uniform negatives, ranking with the Q head; SA2C:
    # the same, its CE weighed by the advantage after a warm-up, ranking with the CE head
    "snqn": one_step(alpha=1.0, gamma=0.5, bootstrap="double", q_negatives=10) + ["model.q_head=linear", "eval.head=q"],
    "sa2c": one_step(alpha=1.0, gamma=0.5, bootstrap="double", q_negatives=10, advantage_weighting=True)
    + ["model.q_head=linear"],
    "ssl-multistep": multi_step(3, 3, alpha=0.0),                     # multi-step self-supervision, no TD
    "td-lambda-ssl1": multi_step(3, 1, alpha=1.0, lam=0.8),           # TD(lambda), one-step self-supervision
    **{f"full-T{T}-lam{lam:g}": multi_step(T, T, alpha=1.0, lam=lam) for T in (3, 5) for lam in (0.0, 0.5, 0.8, 1.0)},
    "full-T1": multi_step(1, 1, alpha=1.0),                           # one-step TD: lambda has no effect at T = 1
    # alpha picked on validation figures only (docs/history.md, "The validation sweep"): TD weight 3 instead of 1
    "full-T3-lam0.8-a3": multi_step(3, 3, alpha=3.0, lam=0.8),
    "full": multi_step(3, 3, alpha=1.0, lam=0.8),                      # the default model, ranking with the ssl head
    "full-mix": multi_step(3, 3, alpha=1.0, lam=0.8) + ["eval.head=mix"],   # the full model ranking with the value
    # the full model at a cost near gru4rec's: the next item over all items, steps 2 and 3 against 256 draws
    "full-sampled": multi_step(3, 3, alpha=1.0, lam=0.8, ssl_negatives=256),
    "sasrec": one_step(alpha=0.0) + ["model.encoder=sasrec"],           # SASRec: next-item CE on self-attention
    "full-sasrec": multi_step(3, 3, alpha=1.0, lam=0.8) + ["model.encoder=sasrec"],   # the full model on SASRec
    # Each idea of the method alone on SASRec (issue 37); not tuned: they train at the tuned sasrec's point, so a
    # difference against it is the idea's and not its own hyperparameters'. `whole-sasrec` is full-sasrec's recipe.
    "ssl-multistep-sasrec": multi_step(3, 3, alpha=0.0) + ["model.encoder=sasrec"],            # K 3, no TD
    "td-lambda-ssl1-sasrec": multi_step(3, 1, alpha=1.0, lam=0.8) + ["model.encoder=sasrec"],  # T 3, K 1
    # The RecBole anchor's way to train them (../shared/REFERENCES.md: 10-item histories, as SQN's windows):
    # each event's state from its 10 items before, gradients through all 10 (whole sessions stop them at
    # every train.chunk_len events, and SASRec's positions there run modulo its max_len)
    "gru4rec-w10": one_step(alpha=0.0) + ["pool.state_len=10"],
    "sasrec-w10": one_step(alpha=0.0) + ["model.encoder=sasrec", "pool.state_len=10"],
}
LAMBDAS = (0.0, 0.5, 0.8, 1.0)
# Issue 21's Q-ranking family: the recipe picked on the clickbait preset's validation value figures
# (docs/results.md, "Calibrating the value" and "Slower learning keeps the ranking"): IQL's expectile
# bootstrap, the checkpoint with the lowest validation value RMSE, 10 epochs, Adam at 1e-3 with weight
# decay 1e-4 (at 3e-3 the Q head's ranking drifts after epoch 2); every model ranks with its Q head.
Q_RECIPE = ["train.bootstrap=expectile", "model.v_head=true", "eval.select_metric=value/rmse", "train.epochs=10",
            "train.lr=0.001", "train.weight_decay=0.0001", "eval.head=q"]
MODELS.update({
    "q-T1": multi_step(1, 1, alpha=1.0) + Q_RECIPE,
    "q-T1-w10": multi_step(1, 1, alpha=1.0) + Q_RECIPE + ["pool.state_len=10"],   # SQN's 10-item windows
    **{f"q-T{T}-lam{lam:g}": multi_step(T, T, alpha=1.0, lam=lam) + Q_RECIPE for T in (3, 5) for lam in LAMBDAS},
    "q-T3-K1-lam0.8": multi_step(3, 1, alpha=1.0, lam=0.8) + Q_RECIPE,     # multi-step TD, one-step self-supervision
    # RecSim, where a click's effect shows 50-250 steps later: returns over 20 clicks (K 3: five self-supervised
    # weights exist), and the dueling head, whose V(s) carries the level (the budget left) that items share
    "q-T20-K3-lam1": multi_step(20, 3, alpha=1.0, lam=1.0) + Q_RECIPE,
    "q-T1-duel": multi_step(1, 1, alpha=1.0) + Q_RECIPE + ["model.q_head=dueling"],
    "q-T20-K3-lam1-duel": multi_step(20, 3, alpha=1.0, lam=1.0) + Q_RECIPE + ["model.q_head=dueling"],
    # the same model deployed through its value reranking of the next-item head's top items (eval.rerank_top)
    "q-T20-K3-lam1-duel-mix": multi_step(20, 3, alpha=1.0, lam=1.0) + Q_RECIPE + ["model.q_head=dueling", "eval.head=mix"],
})
MODELS["whole-sasrec"] = MODELS["full-sasrec"]    # T 3, K 3, lambda 0.8: a name --tuned gives no point of its own
# SASRec trained as the RecBole anchor was (results/sasrec-anchor/b512: 10-item windows, batches of 512, its point
# lr 3e-3, dropout 0.5, weight decay 1e-4; run with train.epochs=40, train.patience=10), and the method's parts on
# it the same way (issue 37 on MovieLens-100K); full-sasrec-w10-b512 keeps full-sasrec's own tuned point instead.
ANCHOR = ["pool.state_len=10", "train.batch_size=512"]
ANCHOR_POINT = ["train.lr=0.003", "model.dropout=0.5", "train.weight_decay=0.0001"]
MODELS.update({f"{model}-w10-b512": MODELS[model] + ANCHOR + ANCHOR_POINT
               for model in ("sasrec", "ssl-multistep-sasrec", "td-lambda-ssl1-sasrec", "whole-sasrec")})
# full-sasrec's point chosen in results/tuning/movielens-loo.csv, appended as compare.py --tuned appends it
MODELS["full-sasrec-w10-b512"] = MODELS["full-sasrec"] + ANCHOR + ["train.lr=0.001", "model.dropout=0.5", "train.alpha=3.0"]
# The published methods a model of ours is compared against (results/differences.csv: against the best
# of them by validation); popularity is reported beside them but not paired.
BASELINES = ("gru4rec", "sasrec", "gru4rec-w10", "sasrec-w10", "gru-sqn", "snqn", "sa2c")
