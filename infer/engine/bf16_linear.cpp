// A bf16 linear layer for the compiled steps on CPUs with AVX512-BF16 (infer/engine/kernels.py loads it).
//
// y[M, N] = x[M, K] @ W[N, K]^T with W packed once (bf16_pack) so that each block of 32 output columns streams
// its weights as 64-byte rows, and the dot products run on vdpbf16ps (two bf16 products summed into an fp32
// lane per instruction). Several rows share each weight load (4 while two blocks stream side by side, 8 for a
// lone block), so a step of 1 to 8 token rows costs about the same; inductor's C++ template converts bf16 to fp32
// and uses fp32 FMAs, which turns compute-bound from 8 rows on. Each output is one fixed-order sum over k whatever
// M is: a row's result does not depend on the other rows of the step (batch invariance). Threads split the column
// blocks, never the sum.
#include <ATen/core/Tensor.h>  // not torch/extension.h: 3-4x the compile time
#include <ATen/ops/empty.h>
#include <torch/library.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace {

constexpr int64_t kCols = 32;  // output columns per block: two zmm registers of 16 fp32 lanes
constexpr int kMaxRows = 8;    // token rows sharing one weight load (2 x 8 accumulators + 2 weight registers)

// W [N, K] -> [N / 32, K / 2, 32, 2]: block nb, k-pair kp holds (W[32 nb + j][2 kp], W[32 nb + j][2 kp + 1]).
at::Tensor bf16_pack(const at::Tensor& w) {
  TORCH_CHECK(w.scalar_type() == at::kBFloat16 && w.dim() == 2, "bf16_pack: a 2-D bfloat16 weight, got ",
              w.scalar_type(), " of ", w.dim(), " dims");
  const int64_t N = w.size(0), K = w.size(1);
  TORCH_CHECK(N % kCols == 0 && K % 2 == 0, "bf16_pack: needs N % 32 == 0 and K % 2 == 0, got ", N, " x ", K);
  auto wc = w.contiguous();
  auto out = at::empty({N / kCols, K / 2, kCols, 2}, w.options());
  const auto* src = reinterpret_cast<const uint16_t*>(wc.data_ptr());
  auto* dst = reinterpret_cast<uint16_t*>(out.data_ptr());
  at::parallel_for(0, N / kCols, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t nb = b0; nb < b1; nb++)
      for (int64_t kp = 0; kp < K / 2; kp++)
        for (int64_t j = 0; j < kCols; j++)
          for (int64_t t = 0; t < 2; t++)
            dst[((nb * (K / 2) + kp) * kCols + j) * 2 + t] = src[(nb * kCols + j) * K + 2 * kp + t];
  });
  return out;
}

// MB rows of x (row stride K) against NBLK packed column blocks read side by side (two weight streams keep more
// memory requests in flight than one: 30-33 % faster at 1 row here, 14-24 % at 4, 5-14 % at 8)
// -> acc [MB][NBLK][32] fp32
template <int MB, int NBLK>
inline void dot_blocks(const uint16_t* x, int64_t K, const uint16_t* wp, float* acc_out) {
  constexpr int R = 2 * NBLK;  // zmm registers of output columns per row
  const int64_t stride = K * kCols;  // elements between two column blocks
  __m512 acc[MB][R];
  for (int m = 0; m < MB; m++)
    for (int r = 0; r < R; r++) acc[m][r] = _mm512_setzero_ps();
  for (int64_t kp = 0; kp < K / 2; kp++) {
    __m512i b[R];
    for (int r = 0; r < R; r++) b[r] = _mm512_loadu_si512(wp + (r / 2) * stride + kp * 2 * kCols + (r % 2) * 16 * 2);
    for (int m = 0; m < MB; m++) {
      const __m512i a = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(x + m * K + 2 * kp));
      for (int r = 0; r < R; r++) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], (__m512bh)a, (__m512bh)b[r]);
    }
  }
  for (int m = 0; m < MB; m++)
    for (int r = 0; r < R; r++) _mm512_storeu_ps(acc_out + (m * NBLK + r / 2) * kCols + (r % 2) * 16, acc[m][r]);
}

using DotFn = void (*)(const uint16_t*, int64_t, const uint16_t*, float*);
// one block: up to 8 rows a pass; two blocks: up to 4 rows a pass (2 x 8 or 4 x 4 accumulators in registers)
constexpr DotFn kOne[kMaxRows + 1] = {nullptr,          dot_blocks<1, 1>, dot_blocks<2, 1>,
                                      dot_blocks<3, 1>, dot_blocks<4, 1>, dot_blocks<5, 1>,
                                      dot_blocks<6, 1>, dot_blocks<7, 1>, dot_blocks<8, 1>};
constexpr DotFn kTwo[5] = {nullptr, dot_blocks<1, 2>, dot_blocks<2, 2>, dot_blocks<3, 2>, dot_blocks<4, 2>};

// x [..., K] bf16, wp = bf16_pack(W) -> [..., N] bf16 (fp32 sums, rounded to nearest even once)
at::Tensor bf16_linear(const at::Tensor& x, const at::Tensor& wp) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && wp.scalar_type() == at::kBFloat16 && wp.dim() == 4,
              "bf16_linear: bfloat16 input and a bf16_pack'ed weight");
  auto xc = x.contiguous();
  const int64_t K = xc.size(-1), NB = wp.size(0), N = NB * kCols;
  TORCH_CHECK(wp.size(1) * 2 == K, "bf16_linear: input has ", K, " features, the weight ", wp.size(1) * 2);
  const int64_t M = K ? xc.numel() / K : 0;
  auto sizes = xc.sizes().vec();
  sizes.back() = N;
  auto out = at::empty(sizes, xc.options());
  const auto* X = reinterpret_cast<const uint16_t*>(xc.data_ptr());
  const auto* W = reinterpret_cast<const uint16_t*>(wp.data_ptr());
  auto* O = reinterpret_cast<uint16_t*>(out.data_ptr());
  // rows m0.. of NBLK blocks from nb -> O, through acc [rows][NBLK][32]
  auto store = [&](const float* acc, int64_t m0, int64_t rows, int64_t nb, int nblk) {
    for (int64_t m = 0; m < rows; m++)
      for (int h = 0; h < nblk; h++) {
        uint16_t* o = O + (m0 + m) * N + (nb + h) * kCols;
        const float* a = acc + (m * nblk + h) * kCols;
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(a)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 16),
                            (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(a + 16)));
      }
  };
  at::parallel_for(0, NB, 1, [&](int64_t b0, int64_t b1) {
    alignas(64) float acc[kMaxRows * kCols];
    int64_t nb = b0;
    for (; nb + 1 < b1; nb += 2)  // pairs of blocks, 4 rows a pass (rows 5-8 read the pair again, from L2)
      for (int64_t m0 = 0; m0 < M; m0 += 4) {
        const int64_t rows = std::min<int64_t>(4, M - m0);
        kTwo[rows](X + m0 * K, K, W + nb * K * kCols, acc);
        store(acc, m0, rows, nb, 2);
      }
    for (; nb < b1; nb++)  // a last single block, 8 rows a pass
      for (int64_t m0 = 0; m0 < M; m0 += kMaxRows) {
        const int64_t rows = std::min<int64_t>(kMaxRows, M - m0);
        kOne[rows](X + m0 * K, K, W + nb * K * kCols, acc);
        store(acc, m0, rows, nb, 1);
      }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(medusa, m) {
  m.def("bf16_pack(Tensor w) -> Tensor");
  m.def("bf16_linear(Tensor x, Tensor wp) -> Tensor");
}

TORCH_LIBRARY_IMPL(medusa, CPU, m) {
  m.impl("bf16_pack", bf16_pack);
  m.impl("bf16_linear", bf16_linear);
}

