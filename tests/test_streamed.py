"""The streamed kernels against the unstreamed computations: cross-entropy (values and all three
gradients) and argmax here; ranking in test_metrics.py."""
import pytest
import torch
from torch.nn import functional as F

from seqrec.nn import streamed
from seqrec.nn.streamed import argmax_linear, chunked_logits, linear_cross_entropy


@pytest.mark.parametrize("rows,hidden,outputs,chunk", [(7, 4, 13, 5), (5, 3, 8, 8), (6, 8, 9, 64), (1, 2, 1, 3),
                                                        (33, 16, 300, 7)])
def test_matches_cross_entropy_of_the_full_logits(rows, hidden, outputs, chunk):
    torch.manual_seed(rows * 100 + outputs)
    x = torch.randn(rows, hidden, dtype=torch.float64, requires_grad=True)
    w = torch.randn(outputs, hidden, dtype=torch.float64, requires_grad=True)
    b = torch.randn(outputs, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, outputs, (rows,))
    targets[0] = 0                                          # the padding column is a legal target too
    upstream = torch.randn(rows, dtype=torch.float64)       # any weighting of the rows, signs included

    expected = F.cross_entropy(F.linear(x, w, b), targets, reduction="none")
    expected_grads = torch.autograd.grad((expected * upstream).sum(), (x, w, b))
    got = linear_cross_entropy(x, w, b, targets, chunk=chunk)
    got_grads = torch.autograd.grad((got * upstream).sum(), (x, w, b))

    torch.testing.assert_close(got, expected)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e)


def test_repeated_targets_accumulate_and_large_logits_stay_finite():
    x = torch.tensor([[30.0, -2.0], [30.0, -2.0], [0.5, 0.1]], requires_grad=True)
    w = torch.tensor([[3.0, 1.0], [-1.0, 2.0], [2.9, 0.0]], requires_grad=True)
    b = torch.zeros(3, requires_grad=True)
    targets = torch.tensor([2, 2, 2])                       # logits near 90: exp would overflow if unshifted
    expected = F.cross_entropy(F.linear(x, w, b), targets, reduction="none")
    got = linear_cross_entropy(x, w, b, targets, chunk=2)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), w)[0], torch.autograd.grad(expected.sum(), w)[0])


@pytest.mark.parametrize("chunk", [1, 3, 16, 100])
def test_streamed_argmax_equals_the_argmax_of_the_full_scores(chunk):
    g = torch.Generator().manual_seed(chunk)
    features = torch.randn(5, 6, 4, generator=g, dtype=torch.float64)
    weight, bias = torch.randn(41, 4, generator=g, dtype=torch.float64), torch.randn(41, generator=g, dtype=torch.float64)
    bias[0] = 1e9                                                        # padding: never the argmax
    weight[17], bias[17] = weight[30], bias[30]                          # exact ties go to the lowest id
    scores = features @ weight.T + bias
    expected = scores[..., 1:].argmax(-1) + 1
    torch.testing.assert_close(argmax_linear(features, weight, bias, chunk=chunk), expected)


@pytest.mark.parametrize("chunk,first", [(1, 0), (4, 1), (5, 0), (64, 1)])
def test_chunked_logits_cover_every_item_once(chunk, first):
    g = torch.Generator().manual_seed(chunk)
    x, w, b = torch.randn(3, 4, generator=g), torch.randn(13, 4, generator=g), torch.randn(13, generator=g)
    blocks = [(start, block.clone()) for start, block in chunked_logits(x, w, b, chunk, first)]
    assert [s for s, _ in blocks] == list(range(first, 13, chunk))
    torch.testing.assert_close(torch.cat([blk for _, blk in blocks], 1), F.linear(x, w, b)[:, first:])


@pytest.fixture
def eager_after():
    """Whatever a test compiles, the kernels are the eager ones again after it."""
    yield
    streamed.logsumexp_update, streamed.softmax_grad_ = streamed._EAGER


def test_compiled_kernels_match_cross_entropy_of_the_full_logits(eager_after):
    assert streamed.compile_kernels()
    assert streamed.softmax_grad_ is not streamed._EAGER[1] and streamed.compile_kernels()   # twice: once
    torch.manual_seed(3)
    for rows in (7, 33):                                  # two row counts: symbolic shapes, no recompile error
        features = torch.randn(rows, 8, requires_grad=True)
        weight, bias = torch.randn(50, 8, requires_grad=True), torch.randn(50, requires_grad=True)
        targets = torch.randint(0, 50, (rows,))
        upstream = torch.rand(rows)
        ours = torch.autograd.grad((linear_cross_entropy(features, weight, bias, targets, chunk=16) * upstream).sum(),
                                   (features, weight, bias))
        full = torch.autograd.grad((F.cross_entropy(F.linear(features, weight, bias), targets, reduction="none")
                                    * upstream).sum(), (features, weight, bias))
        for a, b in zip(ours, full):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_compiling_that_fails_warns_once_and_keeps_the_eager_kernels(monkeypatch, capsys, eager_after):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")
    monkeypatch.setattr(torch, "compile", no_compiler)
    assert streamed.compile_kernels() is False
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: train.compile: torch.compile failed (RuntimeError: "
                                                   "InvalidCxxCompiler: No working C++ compiler found)")
    assert (streamed.logsumexp_update, streamed.softmax_grad_) == streamed._EAGER


@pytest.mark.parametrize("k,chunk", [(3, 2), (5, 4), (12, 5), (40, 7)])
@pytest.mark.parametrize("masked", [False, True])
def test_streamed_top_k_equals_the_top_k_of_the_full_scores(k, chunk, masked):
    """Across chunk borders, with seen items masked, and k beyond the unmasked items (ends in -inf)."""
    torch.manual_seed(k * 10 + chunk)
    x, w, b = torch.randn(6, 4, dtype=torch.float64), torch.randn(14, 4, dtype=torch.float64), torch.randn(14, dtype=torch.float64)
    seen = torch.tensor([[1, 5, 13, 0], [2, 2, 0, 0], [0, 0, 0, 0], [3, 4, 6, 7], [13, 12, 11, 10], [9, 0, 0, 0]])
    full = F.linear(x, w, b)
    full[:, 0] = float("-inf")
    if masked:
        full = full.scatter(1, seen, float("-inf"))
    full[:, 0] = float("-inf")
    values, items, lse = streamed.top_k_linear(x, w, b, k, seen if masked else None, chunk=chunk)
    expected_values, expected_items = full.topk(min(k, 13), 1)
    torch.testing.assert_close(values, expected_values)
    live = torch.isfinite(expected_values)
    assert torch.equal(items[live], expected_items[live])
    torch.testing.assert_close(lse, torch.logsumexp(full, 1))


def test_streamed_top_k_refuses_nan():
    w = torch.randn(6, 3)
    w[4] = float("nan")
    with pytest.raises(streamed.NaNScores):
        streamed.top_k_linear(torch.randn(2, 3), w, torch.zeros(6), 2, chunk=2)
