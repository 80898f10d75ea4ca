// Attention of the compiled steps over the preallocated cache, for bf16 models on CPUs with AVX-512 (loaded with
// bf16_linear.cpp by infer/engine/kernels.py).
//
// A step's few query tokens (1 a row for a plain step, a tree's nodes otherwise) attend over a cache of S slots of
// which each row uses only the first ones (its length, then its tree): the step's mask hides the rest. The compiled
// matmuls computed every slot of every row, ~4 ms of a 17 ms step at 8 rows here. This kernel reads the keys and
// values of the visible slots only (the mask says which), with scores and softmax in fp32 as transformers' eager
// attention does, the probabilities rounded to the value dtype before they weigh the values, sums in fp32 in slot
// order. A query's result depends only on itself, its mask row and the cache: not on the other rows or tokens of the
// step, nor on S (batch invariance, like the linear kernel).
#include <ATen/core/Tensor.h>  // not torch/extension.h: 3-4x the compile time
#include <ATen/ops/empty.h>
#include <torch/library.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr float kHidden = -1e30f;  // mask entries at or below this: the slot is not seen (finfo.min in bf16 or fp32)

inline uint16_t to_bf16(float f) {  // round to nearest even, as torch does
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float from_bf16(uint16_t x) {
  const uint32_t u = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// exp(x) for 16 lanes (x <= 0 here): 2^n * 2^f with a degree-6 polynomial for 2^f, f in [-0.5, 0.5]; relative
// error ~2e-7, well below the bf16 rounding every probability gets next
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));  // x / ln 2
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.69314718055994531f));  // in ln 2 units
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// 16 vectors -> one vector whose lane i is the sum of p[i]'s lanes (the slots' dot products from their partials)
inline __m512 sum16(const __m512* p) {
  __m512 a[8], r[4];
  for (int i = 0; i < 8; i++)  // lanes 0-7: slot 2i's 8 partials, 8-15: slot 2i + 1's
    a[i] = _mm512_add_ps(_mm512_shuffle_f32x4(p[2 * i], p[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(p[2 * i], p[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; i++)  // 128-bit lane j: slot 4i + j's 4 partials
    r[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xDD));
  const __m512 t0 = _mm512_unpacklo_ps(r[0], r[1]), t1 = _mm512_unpackhi_ps(r[0], r[1]);
  const __m512 t2 = _mm512_unpacklo_ps(r[2], r[3]), t3 = _mm512_unpackhi_ps(r[2], r[3]);
  const __m512 u0 = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2)));
  const __m512 u1 = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2)));
  const __m512 u2 = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)));
  const __m512 u3 = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)));
  // lane 4j + k now holds slot 4k + j
  const __m512 sum = _mm512_add_ps(_mm512_add_ps(u0, u1), _mm512_add_ps(u2, u3));
  const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
  return _mm512_permutexvar_ps(order, sum);
}

// One query row (D / 32 zmm of bf16 pairs in q) against the seen slots of one key/value head -> its output row.
// scores / probs: scratch of >= n + 16.
template <int C>  // C = D / 32
void attend_row(const __m512i* q, const uint16_t* kbase, int64_t ks, const uint16_t* vbase, int64_t vs,
                const int32_t* seen, const float* madd, int64_t n, float scale, float* scores, uint16_t* probs,
                uint16_t* orow) {
  // scores: q . k over the seen slots, 16 at a time (vdpbf16ps over feature pairs, then the lanes summed)
  float top = -std::numeric_limits<float>::infinity();
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    const int64_t m = std::min<int64_t>(16, n - j0);
    __m512 part[16];
    for (int64_t j = 0; j < 16; j++) {
      const uint16_t* krow = kbase + static_cast<int64_t>(seen[j0 + (j < m ? j : 0)]) * ks;
      __m512 d = _mm512_setzero_ps();
      for (int c = 0; c < C; c++)
        d = _mm512_dpbf16_ps(d, (__m512bh)q[c], (__m512bh)_mm512_loadu_si512(krow + 32 * c));
      part[j] = d;
    }
    const __mmask16 live = m == 16 ? 0xffff : static_cast<__mmask16>((1u << m) - 1);
    __m512 sc = _mm512_fmadd_ps(sum16(part), _mm512_set1_ps(scale), _mm512_maskz_loadu_ps(live, madd + j0));
    _mm512_mask_storeu_ps(scores + j0, live, sc);
    top = std::max(top, _mm512_mask_reduce_max_ps(live, sc));
  }
  // softmax in fp32: exp(score - max), summed lane-wise in slot order then across lanes; probabilities in bf16
  const __m512 topv = _mm512_set1_ps(top);
  __m512 sumv = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 live = n - j >= 16 ? 0xffff : static_cast<__mmask16>((1u << (n - j)) - 1);
    const __m512 e = _mm512_maskz_mov_ps(live, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(live, scores + j), topv)));
    _mm512_storeu_ps(scores + j, e);
    sumv = _mm512_add_ps(sumv, e);
  }
  const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sumv));
  for (int64_t j = 0; j < n; j += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(probs + j),
                        (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(scores + j), inv)));
  probs[n] = 0;  // an odd count's last pair: (p, 0)
  // out = sum_j p_j v_j over slot pairs: vdpbf16ps on (v_j, v_j+1) interleaved feature by feature
  __m512 lo[C], hi[C];
  for (int c = 0; c < C; c++) lo[c] = hi[c] = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 2) {
    const uint16_t* va = vbase + static_cast<int64_t>(seen[j]) * vs;
    const uint16_t* vb = j + 1 < n ? vbase + static_cast<int64_t>(seen[j + 1]) * vs : va;
    int32_t pp;
    std::memcpy(&pp, probs + j, 4);
    const __m512bh p = (__m512bh)_mm512_set1_epi32(pp);
    for (int c = 0; c < C; c++) {
      const __m512i a = _mm512_loadu_si512(va + 32 * c), b = _mm512_loadu_si512(vb + 32 * c);
      lo[c] = _mm512_dpbf16_ps(lo[c], (__m512bh)_mm512_unpacklo_epi16(a, b), p);
      hi[c] = _mm512_dpbf16_ps(hi[c], (__m512bh)_mm512_unpackhi_epi16(a, b), p);
    }
  }
  // lane i of lo[c]: feature 32c + 8 (i / 4) + i % 4; of hi[c]: the same + 4
  alignas(64) float l[16], h[16];
  for (int c = 0; c < C; c++) {
    _mm512_store_ps(l, lo[c]);
    _mm512_store_ps(h, hi[c]);
    for (int i = 0; i < 16; i++) {
      orow[32 * c + 8 * (i / 4) + i % 4] = to_bf16(l[i]);
      orow[32 * c + 8 * (i / 4) + i % 4 + 4] = to_bf16(h[i]);
    }
  }
}

using RowFn = decltype(&attend_row<2>);

// q [B, H, T, D], k / v [B, KV, S, D] (each D contiguous: cache views), mask [B, 1, T, Sm >= S] additive
// -> out [B, T, H, D] (the layout transformers' attention functions return), in q's dtype (bf16)
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const at::Tensor& mask, double scaling) {
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && k.scalar_type() == at::kBFloat16 &&
                  v.scalar_type() == at::kBFloat16,
              "attention: bfloat16 queries, keys and values");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && mask.dim() == 4, "attention: 4-D inputs");
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t KV = k.size(1), S = k.size(2);
  TORCH_CHECK(D == 64 || D == 128 || D == 256, "attention: head_dim 64, 128 or 256, got ", D);
  TORCH_CHECK(KV > 0 && H % KV == 0 && k.size(0) == B && v.sizes() == k.sizes() && k.size(3) == D,
              "attention: key / value shapes do not match the queries");
  TORCH_CHECK(k.stride(3) == 1 && v.stride(3) == 1, "attention: keys and values need a contiguous last dim");
  TORCH_CHECK(mask.size(0) == B && mask.size(1) == 1 && mask.size(2) == T && mask.size(3) >= S,
              "attention: the mask must be [B, 1, T, >= S]");
  TORCH_CHECK(mask.scalar_type() == at::kBFloat16 || mask.scalar_type() == at::kFloat,
              "attention: a bfloat16 or float32 mask");
  auto qc = q.contiguous();
  auto mc = mask.contiguous();
  const bool mask_bf16 = mc.scalar_type() == at::kBFloat16;
  const int64_t Sm = mc.size(3), G = H / KV;
  const RowFn row = D == 64 ? attend_row<2> : D == 128 ? attend_row<4> : attend_row<8>;
  auto out = at::empty({B, T, H, D}, q.options());
  const auto* Q = reinterpret_cast<const uint16_t*>(qc.data_ptr());
  const auto* K = reinterpret_cast<const uint16_t*>(k.data_ptr());
  const auto* Vp = reinterpret_cast<const uint16_t*>(v.data_ptr());
  const void* M = mc.data_ptr();
  auto* O = reinterpret_cast<uint16_t*>(out.data_ptr());
  const int64_t kb = k.stride(0), kh = k.stride(1), ks = k.stride(2);
  const int64_t vb = v.stride(0), vh = v.stride(1), vs = v.stride(2);
  const float scale = static_cast<float>(scaling);
  // a task: one query token of one row against one key/value head, for the query heads that share it
  at::parallel_for(0, B * T * KV, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> scores(S + 32), madd(S + 16);
    std::vector<uint16_t> probs(S + 32);
    std::vector<int32_t> seen(S + 16);
    for (int64_t i = i0; i < i1; i++) {
      const int64_t b = i / (T * KV), t = (i / KV) % T, g = i % KV;
      const int64_t m0 = (b * T + t) * Sm;
      int64_t n = 0;  // the slots this token sees, in slot order, and their mask values
      for (int64_t s = 0; s < S; s++) {
        const float add = mask_bf16 ? from_bf16(static_cast<const uint16_t*>(M)[m0 + s])
                                    : static_cast<const float*>(M)[m0 + s];
        if (add > kHidden) {
          madd[n] = add;
          seen[n++] = static_cast<int32_t>(s);
        }
      }
      for (int64_t gh = 0; gh < G; gh++) {
        const int64_t h = g * G + gh;
        uint16_t* orow = O + ((b * T + t) * H + h) * D;
        if (n == 0) {  // nothing seen (never in a step: a token sees itself)
          std::memset(orow, 0, D * sizeof(uint16_t));
          continue;
        }
        const uint16_t* qrow = Q + ((b * H + h) * T + t) * D;
        __m512i qv[8];
        for (int64_t c = 0; c < D / 32; c++) qv[c] = _mm512_loadu_si512(qrow + 32 * c);
        row(qv, K + b * kb + g * kh, ks, Vp + b * vb + g * vh, vs, seen.data(), madd.data(), n, scale,
            scores.data(), probs.data(), orow);
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(medusa, m) {
  m.def("attention(Tensor q, Tensor k, Tensor v, Tensor mask, float scaling) -> Tensor");
}

TORCH_LIBRARY_IMPL(medusa, CPU, m) { m.impl("attention", attention); }
