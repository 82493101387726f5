"""Would torch.compile pay for the streamed cross-entropy? Its per-block elementwise work fused, timed.

    python -m benchmarks.compile_ce                       # MovieLens-1M size: 768 rows (256 x K 3), 3,707 items
    python -m benchmarks.compile_ce --rows 768 --items 67353

seqrec.nn.streamed runs a block's log-sum-exp (forward) and its softmax gradient (backward: subtract,
exp, scale) as separate passes over a cache-sized block. Here both are swapped for torch.compile'd
versions (inductor: one generated C++ loop each), with fixed shapes (dynamic=False: recompiles for
every new row count, which the session path's steps have) and with symbolic shapes (dynamic=True),
checked equal to the eager kernel, and forward+backward timed (2 threads, best of 3 rounds of 30).
"""
from __future__ import annotations

import argparse
import time

import torch

from seqrec.nn import streamed


def fwd_bwd_ms(features, weight, bias, targets, repeats: int = 30) -> float:
    """Mean ms of one forward+backward of streamed.linear_cross_entropy with the kernels set now."""
    def step():
        streamed.linear_cross_entropy(features, weight, bias, targets).sum().backward()
    step()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - t0) / repeats * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=768)
    p.add_argument("--items", type=int, default=3707)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5, help="rounds, each timing every kernel in turn (best kept)")
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    features = torch.randn(args.rows, args.hidden, requires_grad=True)
    weight = (0.1 * torch.randn(args.items, args.hidden)).requires_grad_()
    bias = torch.zeros(args.items, requires_grad=True)
    targets = torch.randint(0, args.items, (args.rows,))

    def use(kernels):
        streamed.logsumexp_update, streamed.softmax_grad_ = kernels
        loss = streamed.linear_cross_entropy(features, weight, bias, targets)
        return torch.autograd.grad(loss.sum(), features)[0]

    eager = streamed.logsumexp_update, streamed.softmax_grad_
    reference = use(eager)
    kernels = {"eager": eager}
    for dynamic in (False, True):
        name = f"compiled, dynamic={dynamic}"
        kernels[name] = torch.compile(eager[0], dynamic=dynamic), torch.compile(streamed.softmax_grad, dynamic=dynamic)
        t0 = time.perf_counter()
        assert torch.allclose(use(kernels[name]), reference, rtol=1e-4, atol=1e-6), f"{name} differs"
        print(f"{name}: compiled in {time.perf_counter() - t0:.1f} s, equal to eager")
    best = {name: float("inf") for name in kernels}
    for _ in range(args.rounds):
        for name, pair in kernels.items():
            use(pair)
            best[name] = min(best[name], fwd_bwd_ms(features, weight, bias, targets))
    use(eager)
    print(f"{args.rows} rows x {args.items:,} items, hidden {args.hidden}, forward+backward, best of {args.rounds}:")
    for name, ms in best.items():
        print(f"  {name:24s} {ms:7.2f} ms  ({best['eager'] / ms:.2f}x eager)")


if __name__ == "__main__":
    main()
