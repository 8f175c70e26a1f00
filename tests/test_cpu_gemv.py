"""kernels/cpu_gemv.py: the skinny CPU product against torch's, and its row-count invariance."""

from __future__ import annotations

import pytest
import torch

from kernels import cpu_gemv

op = cpu_gemv.load()
pytestmark = pytest.mark.skipif(op is None, reason="the CPU kernel could not be built here (no C++ compiler?)")


@pytest.mark.parametrize("m", range(1, cpu_gemv.MAX_ROWS + 1))
@pytest.mark.parametrize("k,n,bias", [(64, 96, False), (576, 960, True), (37, 5, True), (1536, 576, False)])
def test_matches_reference(m, k, n, bias):
    g = torch.Generator().manual_seed(m * 1000 + k)
    x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    torch.testing.assert_close(op(x, w, b), cpu_gemv.gemv_reference(x, w, b), atol=1e-4 * k**0.5, rtol=1e-5)


def test_rows_do_not_depend_on_their_neighbours():
    """Each output row is bitwise the same whether computed alone or with up to 7 other rows."""
    g = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(8, 200, generator=g), torch.randn(300, 200, generator=g), torch.randn(300, generator=g)
    alone = torch.cat([op(x[i : i + 1], w, b) for i in range(8)])
    for m in range(1, 9):
        assert torch.equal(op(x[:m], w, b), alone[:m])


def test_strided_input_and_bad_shapes():
    w = torch.randn(16, 32)
    x = torch.randn(3, 64)[:, ::2]  # not contiguous: copied
    torch.testing.assert_close(op(x, w, None), x @ w.T, atol=1e-4, rtol=1e-5)
    with pytest.raises(RuntimeError, match="1 to 8 rows"):
        op(torch.randn(9, 32), w, None)
    with pytest.raises(RuntimeError, match="shapes"):
        op(torch.randn(2, 31), w, None)
