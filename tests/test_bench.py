"""The benchmark's pieces run and report sane figures (tiny sizes: speed is measured by bench.py, not here)."""
import sys

import torch

from benchmarks import bench



def test_bench_pieces_report_positive_figures():
    bench.FIGURES.clear()
    cpu = torch.device("cpu")
    bench.bench_training(torch, cpu, [300], peak=100.0, steps=1, num_events=20_000)
    bench.bench_eval(torch, cpu, 300, peak=100.0, queries=256)
    figures = {name: value for name, value, _, _ in bench.FIGURES}
    for name in ("train_samples_per_s@300", "train_naive_samples_per_s@300", "train_speedup_vs_naive@300",
                 "train_sampled_samples_per_s@300", "train_session_samples_per_s@300",
                 "train_session_share_of_matmul@300", "eval_queries_per_s@0k", "eval_queries_per_s_both_heads@0k"):
        assert figures[name] > 0, name


def test_pool_child_measures_its_own_build(tmp_path):
    r = bench.pool_child(50_000, tmp_path / "pool")
    assert r["events"] == 50_000 and r["seconds"] > 0 and r["peak_rss_mb"] > 0
    assert 9 <= r["disk_bytes"] / r["events"] <= 16


def test_flop_counts():
    # One query: GRU 12 H^2 L plus one all-item product 2 H (N + 1).
    assert bench.eval_query_flops(L=10, H=64, N=999) == 12 * 64 * 64 * 10 + 2 * 64 * 1000
    # One step: GRU fwd+bwd and the target's fwd (4 x 12 H^2 (L+T) B), K-step CE fwd+bwd (3 K x 2 B H (N+1)),
    # and the online all-item Q of the T next states (T x 2 B H (N+1)); the target scores one item each.
    assert bench.train_step_flops(B=1, L=1, T=1, K=1, H=1, N=1) == 3 * 24 + 24 + 3 * 4 + 1 * 4
    # Naive: (T+1) GRU passes of L steps fwd+bwd and T target passes; CE as above; all-item Q of the
    # T+1 states fwd+bwd (3 (T+1) units) and of the T next states on the target.
    assert bench.naive_step_flops(B=1, L=1, T=1, K=1, H=1, N=1) == (3 * 2 + 1) * 12 + 3 * 4 + 3 * 2 * 4 + 1 * 4
    # Session path: GRU over lanes x W positions (online fwd+bwd, target fwd), CE of the trained events
    # (those inside the first C positions), the argmax at every position inside a session.
    from seqrec.data.batches import Chunk
    valid = torch.tensor([[True, True, True], [True, False, False]])
    chunk = Chunk(items=torch.ones(2, 3, dtype=torch.long), rewards=torch.zeros(2, 3), dones=valid, valid=valid,
                  train_len=2, carry=())
    assert bench.session_step_flops(chunk, K=1, H=1, N=1) == 4 * 12 * 2 * 3 + 3 * 4 * 3 + 4 * 4


def test_every_benchmark_step_is_a_learner_update(monkeypatch):
    """The benchmark times the step training takes: Learner.update (with gradient clipping) for the
    fast, naive and sampled steps alike."""
    from seqrec.running.learner import Learner
    calls, clipped = [], []
    update = Learner.update
    monkeypatch.setattr(Learner, "update", lambda self, loss: (calls.append(1), update(self, loss)))
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: (clipped.append(1), clip(*a, **k))[1])
    bench.FIGURES.clear()
    bench.bench_training(torch, torch.device("cpu"), [300], peak=100.0, steps=3, num_events=20_000)
    assert len(calls) == (2 + 3) + (2 + 2) + (2 + 3) + (2 + 3)   # warm-up + timed: fast, naive, sampled, session step
    assert len(clipped) == len(calls)


def test_profile_step_times_every_phase_on_both_paths(tmp_path):
    import subprocess

    from helpers import tiny_overrides, with_root_on_path
    for state_len in (10, 0):
        cmd = [sys.executable, "-m", "benchmarks.profile_step", "--steps", "2", "--top", "3", "--threads", "1"]
        for o in tiny_overrides(tmp_path) + [f"pool.state_len={state_len}"]:
            cmd += ["--set", o]
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env=with_root_on_path())
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = {line.split(":")[0].strip(): line for line in proc.stdout.splitlines() if " ms " in line or "ms" in line}
        for phase in ("batch", "forward", "backward", "optimizer", "step"):
            assert phase in lines, (phase, proc.stdout[:500])
        assert "aten::" in proc.stdout


def test_full_against_gru4rec_measures_every_model_on_both_paths(tmp_path):
    import yaml
    from helpers import tiny_overrides
    config = {}
    for item in tiny_overrides(tmp_path):
        key, value = item.split("=", 1)
        section, name = key.split(".")
        config.setdefault(section, {})[name] = yaml.safe_load(value)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    bench.FIGURES.clear()
    bench.bench_full_vs_gru4rec(torch, torch.device("cpu"), steps=1, datasets=(("tiny", tmp_path / "tiny.yaml"),))
    figures = {name: value for name, value, _, _ in bench.FIGURES}
    for path in ("windows", "sessions"):
        for model in ("full", "gru4rec", "sasrec"):
            assert figures[f"train_{model}_samples_per_s@tiny-{path}"] > 0
        assert figures[f"full_over_gru4rec@tiny-{path}"] == \
            figures[f"train_gru4rec_samples_per_s@tiny-{path}"] / figures[f"train_full_samples_per_s@tiny-{path}"]


def test_sample_flops_by_hand():
    # Window, L 1, T 1, K 1, H 1, N 1 with TD: GRU over 2 items (fwd+bwd 3x, target 1x: 4 x 12 x 2), CE 3 x 2 x 2.
    assert bench.sample_flops(L=1, T=1, K=1, H=1, N=1, td=True) == 4 * 12 * 2 + 3 * 2 * 2
    # Whole sessions, chunk 4, T 3: each event encodes (4 + 2) / 4 items; no TD: fwd+bwd only; K 3.
    assert bench.sample_flops(L=0, T=3, K=3, H=1, N=1, td=False) == 3 * 12 * 1.5 + 3 * 3 * 2 * 2


def test_evaluation_at_a_large_catalogue_reports_speed_and_memory_per_query_count():
    bench.FIGURES.clear()
    bench.bench_eval_catalogue(torch, torch.device("cpu"), 5000, queries=(64, 128))
    figures = {name: value for name, value, _, _ in bench.FIGURES}
    for heads in (1, 3):
        for n in (64, 128):
            assert figures[f"eval_queries_per_s_{heads}_heads@5k-{n}"] > 0
            assert figures[f"eval_peak_rss_mb@5k-{heads}-heads-{n}"] > 0
