"""Support code of the project: everything the entry scripts and the design card's modules stand on,
grouped as the data flows:

    data/        log -> pool -> batches: loaders (the sources), preprocess (filter, split, remap), batches
    nn/          what the network and its loss are built from: encoders (SASRec), losses (the Q terms),
                 streamed (kernels over the whole catalogue)
    running/     a run: config, runs (checkpoints, metrics), learner (the training loop), distributed,
                 allocator, atomic (files written whole), errors, recommend, plots
    evaluation/  offline (full-ranking evaluation), metrics, value (Q against returns), ope and ope_eval
                 (off-policy estimators)
    worlds/      simulator (the built-in world), recsim (Google's RecSim), online (rollouts, policies,
                 impression logs)

Nothing here imports a top-level module (a test checks it), so data flows one way: the top level
(replay_buffer.py, model.py, ssl_heads.py, td_lambda.py, train_offline.py, online_eval.py) uses the
package, never the reverse.
"""
