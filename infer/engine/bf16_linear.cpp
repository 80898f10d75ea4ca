// A bf16 linear layer for the compiled steps on CPUs with AVX512-BF16 (infer/engine/kernels.py loads it).
//
// y[M, N] = x[M, K] @ W[N, K]^T with W packed once (bf16_pack) so that each block of 32 output columns streams
// its weights as 64-byte rows, and the dot products run on vdpbf16ps (two bf16 products summed into an fp32
// lane per instruction). Up to 8 rows share each weight load, so a step of 1 to 8 token rows reads the weights
// once at about the same cost; inductor's C++ template converts bf16 to fp32 and uses fp32 FMAs, which turns
// compute-bound from 8 rows on. Each output is one fixed-order sum over k whatever M is: a row's result does not
// depend on the other rows of the step (batch invariance). Threads split the column blocks, never the sum.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace {

constexpr int64_t kCols = 32;  // output columns per block: two zmm registers of 16 fp32 lanes
constexpr int kMaxRows = 8;    // token rows sharing one weight load (2 x 8 accumulators + 2 weight registers)

// W [N, K] -> [N / 32, K / 2, 32, 2]: block nb, k-pair kp holds (W[32 nb + j][2 kp], W[32 nb + j][2 kp + 1]).
torch::Tensor bf16_pack(const torch::Tensor& w) {
  TORCH_CHECK(w.scalar_type() == at::kBFloat16 && w.dim() == 2, "bf16_pack: a 2-D bfloat16 weight, got ",
              w.scalar_type(), " of ", w.dim(), " dims");
  const int64_t N = w.size(0), K = w.size(1);
  TORCH_CHECK(N % kCols == 0 && K % 2 == 0, "bf16_pack: needs N % 32 == 0 and K % 2 == 0, got ", N, " x ", K);
  auto wc = w.contiguous();
  auto out = torch::empty({N / kCols, K / 2, kCols, 2}, w.options());
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

// MB rows of x (row stride K) against one packed column block -> acc [MB][32] fp32
template <int MB>
inline void dot_block(const uint16_t* x, int64_t K, const uint16_t* wp, float* acc_out) {
  __m512 acc[MB][2];
  for (int m = 0; m < MB; m++) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
  for (int64_t kp = 0; kp < K / 2; kp++) {
    const __m512i b0 = _mm512_loadu_si512(wp + kp * 2 * kCols);
    const __m512i b1 = _mm512_loadu_si512(wp + kp * 2 * kCols + kCols);
    _mm_prefetch(reinterpret_cast<const char*>(wp + kp * 2 * kCols + 1024), _MM_HINT_T0);
    for (int m = 0; m < MB; m++) {
      const __m512i a = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(x + m * K + 2 * kp));
      acc[m][0] = _mm512_dpbf16_ps(acc[m][0], (__m512bh)a, (__m512bh)b0);
      acc[m][1] = _mm512_dpbf16_ps(acc[m][1], (__m512bh)a, (__m512bh)b1);
    }
  }
  for (int m = 0; m < MB; m++) {
    _mm512_storeu_ps(acc_out + m * kCols, acc[m][0]);
    _mm512_storeu_ps(acc_out + m * kCols + 16, acc[m][1]);
  }
}

using DotFn = void (*)(const uint16_t*, int64_t, const uint16_t*, float*);
constexpr DotFn kDot[kMaxRows + 1] = {nullptr,       dot_block<1>, dot_block<2>, dot_block<3>, dot_block<4>,
                                      dot_block<5>, dot_block<6>, dot_block<7>, dot_block<8>};

// x [..., K] bf16, wp = bf16_pack(W) -> [..., N] bf16 (fp32 sums, rounded to nearest even once)
torch::Tensor bf16_linear(const torch::Tensor& x, const torch::Tensor& wp) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && wp.scalar_type() == at::kBFloat16 && wp.dim() == 4,
              "bf16_linear: bfloat16 input and a bf16_pack'ed weight");
  auto xc = x.contiguous();
  const int64_t K = xc.size(-1), NB = wp.size(0), N = NB * kCols;
  TORCH_CHECK(wp.size(1) * 2 == K, "bf16_linear: input has ", K, " features, the weight ", wp.size(1) * 2);
  const int64_t M = K ? xc.numel() / K : 0;
  auto sizes = xc.sizes().vec();
  sizes.back() = N;
  auto out = torch::empty(sizes, xc.options());
  const auto* X = reinterpret_cast<const uint16_t*>(xc.data_ptr());
  const auto* W = reinterpret_cast<const uint16_t*>(wp.data_ptr());
  auto* O = reinterpret_cast<uint16_t*>(out.data_ptr());
  at::parallel_for(0, NB, 1, [&](int64_t b0, int64_t b1) {
    alignas(64) float acc[kMaxRows * kCols];
    for (int64_t nb = b0; nb < b1; nb++) {
      const uint16_t* block = W + nb * K * kCols;
      for (int64_t m0 = 0; m0 < M; m0 += kMaxRows) {
        const int64_t rows = std::min<int64_t>(kMaxRows, M - m0);
        kDot[rows](X + m0 * K, K, block, acc);
        for (int64_t m = 0; m < rows; m++) {
          uint16_t* o = O + (m0 + m) * N + nb * kCols;
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(o),
                              (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(acc + m * kCols)));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 16),
                              (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(acc + m * kCols + 16)));
        }
      }
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

