"""Skinny float32 products on CPU: y[M, N] = x[M, K] @ w[N, K]^T (+ b) for M <= 8 rows.

Why: a decode step with few sequences is a chain of such products, and their speed is how fast
the weights stream from memory. MKL's and oneDNN's kernels reach 5-12 GB/s on them on the 2-core
machines this project measures on (thread start-up and blocking made for big M), about half of
what the memory gives. This kernel walks the weight rows once, split between torch's intra-op
threads, each row's dot products with all M rows of x accumulated in SIMD registers, and reaches
17-19 GB/s at M=1 and 12-14 GB/s at M=4 there (`harness bench decode` measures it).

Each output element is one row's dot product summed in a fixed order that does not depend on M,
so a sequence's logits do not change with how many other rows share the step (M <= 8).

The C++ source is compiled on first use with torch's extension builder (a C++ compiler and ninja
are needed; it takes about a minute, then loads from torch's extension cache). Where it cannot be
built, `load()` returns None once and says why, and callers keep their library product.
`gemv_reference` is the pure-torch definition the tests compare against.
"""

from __future__ import annotations

import threading
import warnings

import torch

MAX_ROWS = 8

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cstring>

typedef float v8 __attribute__((vector_size(32)));

static inline v8 load8(const float* p) { v8 v; std::memcpy(&v, p, sizeof(v)); return v; }

static inline float hsum(v8 v) {
  float s = 0.f;
  for (int i = 0; i < 8; ++i) s += v[i];
  return s;
}

// rows [n0, n1) of y = x @ w^T + b, for M rows of x: each weight row is read once
template <int M>
static void rows(const float* x, const float* w, const float* b, float* y, int64_t K, int64_t N, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const float* wr = w + n * K;
    if (n + 2 < n1) __builtin_prefetch(wr + 2 * K);
    v8 acc[M][2];
    for (int m = 0; m < M; ++m) { acc[m][0] = v8{}; acc[m][1] = v8{}; }
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
      v8 w0 = load8(wr + k), w1 = load8(wr + k + 8);
      for (int m = 0; m < M; ++m) {
        acc[m][0] += load8(x + m * K + k) * w0;
        acc[m][1] += load8(x + m * K + k + 8) * w1;
      }
    }
    for (int m = 0; m < M; ++m) {
      float t = hsum(acc[m][0] + acc[m][1]);
      for (int64_t kk = k; kk < K; ++kk) t += x[m * K + kk] * wr[kk];
      y[m * N + n] = b ? t + b[n] : t;
    }
  }
}

torch::Tensor skinny_linear(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "skinny_linear: shapes");
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat, "skinny_linear: float32 only");
  TORCH_CHECK(w.is_contiguous(), "skinny_linear: weight must be contiguous");
  x = x.contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TORCH_CHECK(M >= 1 && M <= 8, "skinny_linear: 1 to 8 rows");
  torch::Tensor b;
  if (bias.has_value() && bias->defined()) b = bias->contiguous();
  auto y = torch::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
    switch (M) {
      case 1: rows<1>(xp, wp, bp, yp, K, N, n0, n1); break;
      case 2: rows<2>(xp, wp, bp, yp, K, N, n0, n1); break;
      case 3: rows<3>(xp, wp, bp, yp, K, N, n0, n1); break;
      case 4: rows<4>(xp, wp, bp, yp, K, N, n0, n1); break;
      case 5: rows<5>(xp, wp, bp, yp, K, N, n0, n1); break;
      case 6: rows<6>(xp, wp, bp, yp, K, N, n0, n1); break;
      case 7: rows<7>(xp, wp, bp, yp, K, N, n0, n1); break;
      default: rows<8>(xp, wp, bp, yp, K, N, n0, n1); break;
    }
  });
  return y;
}
"""

_lock = threading.Lock()
_state: dict[str, object] = {}


def load():
    """The compiled `skinny_linear(x, w, bias)` op, or None (with one warning) where it cannot be built."""
    with _lock:
        if "op" not in _state:
            _state["op"] = _build()
        return _state["op"]


def _build():
    try:
        from torch.utils.cpp_extension import load_inline

        module = load_inline(
            name="reasoning_harness_cpu_gemv", cpp_sources=[_SOURCE], functions=["skinny_linear"],
            extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False,
        )
        return module.skinny_linear
    except Exception as e:  # noqa: BLE001 - no compiler, no ninja, an unknown -march: keep the library product
        warnings.warn(f"CPU skinny-product kernel not built ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                      "decode steps use oneDNN/MKL products", RuntimeWarning, stacklevel=3)
        return None


def gemv_reference(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return torch.nn.functional.linear(x, w, bias)
