"""Support code of the project: everything the entry scripts and the design card's modules stand on.

Nothing here imports a top-level module (a test checks it), so data flows one way: the top level
(replay_buffer.py, model.py, ssl_heads.py, td_lambda.py, train_offline.py, online_eval.py) uses the
package, never the reverse.
"""
