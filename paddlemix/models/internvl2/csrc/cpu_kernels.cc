// This project's CPU kernels, where Paddle's eager CPU kernels are the limit (kernels.py picks them):
// * products of a few float32 rows with a bfloat16 or int8 weight kept in the checkpoint's
//   [out, in] layout (decoding is bound by the weight bytes read per token, so each weight row is
//   read once for all rows and widened in registers: bf16 -> fp32 is a 16-bit shift, int8 is scaled
//   per output row after the dot product); threads split the output features; with MKL, a bf16
//   GEMM for many rows (prefill, the ViT);
// * the decoder's attention over the KV cache (RoPE, the cache write, grouped-query attention) for
//   a decoded token and for a prefill, and a whole decoder layer for a decoding step;
// * RMSNorm (also after a residual add) and SwiGLU; InternViT's attention on the packed qkv and its
//   layer-scaled residual with the next LayerNorm;
// * the row softmax of scale * x (attention) and the exact erf GELU, with a vectorised exp.
// The AVX-512 and AVX2+FMA bodies are compiled with function target attributes, so this file builds
// with the baseline flags; Python picks the body from the CPU's features (`isa`).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "paddle/extension.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PADDLEMIX_X86 1
#ifdef PADDLEMIX_EMULATED_AVX512  // a test build: the AVX-512 bodies on an AVX2 CPU (see the header)
#include "emulated_avx512.h"
#define TARGET_AVX512 __attribute__((target("avx2,fma")))
#else
#define TARGET_AVX512 __attribute__((target("avx512f")))
#endif
#endif

#ifdef PADDLEMIX_MKL  // MKL's BLAS from the Paddle wheel (libmklml_intel.so), for the attention's products
extern "C" void cblas_sgemm(int layout, int transa, int transb, int m, int n, int k, float alpha, const float* a,
                            int lda, const float* b, int ldb, float beta, float* c, int ldc);
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
#endif

namespace {

enum Isa { kPlain = 0, kAvx2 = 1, kAvx512 = 2 };

inline float widen(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, sizeof(value));
  return value;
}
inline float widen(int8_t value) { return static_cast<float>(value); }

// The finished output: the dot product, times the int8 scale, plus the bias (either may be absent).
inline float finish(float sum, const float* scale, const float* bias, int64_t n) {
  if (scale) sum *= scale[n];
  return bias ? sum + bias[n] : sum;
}

// out[r, n] for rows [0, rows) and outputs [n_begin, n_end), one scalar at a time.
template <typename W>
void plain_block(const float* x, int64_t rows, int64_t k_dim, const W* w, const float* scale, const float* bias,
                 float* out, int64_t n_dim, int64_t n_begin, int64_t n_end) {
  for (int64_t n = n_begin; n < n_end; ++n) {
    const W* w_row = w + n * k_dim;
    for (int64_t r = 0; r < rows; ++r) {
      const float* x_row = x + r * k_dim;
      float sum = 0.f;
      for (int64_t k = 0; k < k_dim; ++k) sum += widen(w_row[k]) * x_row[k];
      out[r * n_dim + n] = finish(sum, scale, bias, n);
    }
  }
}

#ifdef PADDLEMIX_X86
// ---- AVX-512: 16 floats per register, up to 8 rows with two accumulators each ------------------
TARGET_AVX512 inline __m512 load16(const uint16_t* p) {
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}
TARGET_AVX512 inline __m512 load16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// The weight row `ahead` elements on is fetched into the caches meanwhile: the hardware prefetcher
// alone kept a matrix-vector product at ~55% of the memory bandwidth (9 of 21 GB/s on two threads).
template <int ROWS, typename W>
TARGET_AVX512 void avx512_rows(const float* x, int64_t ld, int64_t k_dim, const W* w_row, int64_t ahead, float* sums) {
  __m512 acc0[ROWS], acc1[ROWS];
  for (int r = 0; r < ROWS; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= k_dim; k += 32) {
    _mm_prefetch(reinterpret_cast<const char*>(w_row + k + ahead), _MM_HINT_T0);
    const __m512 w0 = load16(w_row + k), w1 = load16(w_row + k + 16);
    for (int r = 0; r < ROWS; ++r) {
      acc0[r] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + r * ld + k), acc0[r]);
      acc1[r] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + r * ld + k + 16), acc1[r]);
    }
  }
  for (; k + 16 <= k_dim; k += 16) {
    const __m512 w0 = load16(w_row + k);
    for (int r = 0; r < ROWS; ++r) acc0[r] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + r * ld + k), acc0[r]);
  }
  for (int r = 0; r < ROWS; ++r) {
    float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0[r], acc1[r]));
    for (int64_t t = k; t < k_dim; ++t) sum += widen(w_row[t]) * x[r * ld + t];
    sums[r] = sum;
  }
}

// ---- AVX2 + FMA: 8 floats per register, up to 4 rows with two accumulators each ---------------
__attribute__((target("avx2,fma"))) inline __m256 load8(const uint16_t* p) {
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}
__attribute__((target("avx2,fma"))) inline __m256 load8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
__attribute__((target("avx2,fma"))) inline float reduce8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int ROWS, typename W>
__attribute__((target("avx2,fma"))) void avx2_rows(const float* x, int64_t ld, int64_t k_dim, const W* w_row,
                                                  int64_t ahead, float* sums) {
  __m256 acc0[ROWS], acc1[ROWS];
  for (int r = 0; r < ROWS; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= k_dim; k += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(w_row + k + ahead), _MM_HINT_T0);
    const __m256 w0 = load8(w_row + k), w1 = load8(w_row + k + 8);
    for (int r = 0; r < ROWS; ++r) {
      acc0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + r * ld + k), acc0[r]);
      acc1[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + r * ld + k + 8), acc1[r]);
    }
  }
  for (; k + 8 <= k_dim; k += 8) {
    const __m256 w0 = load8(w_row + k);
    for (int r = 0; r < ROWS; ++r) acc0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + r * ld + k), acc0[r]);
  }
  for (int r = 0; r < ROWS; ++r) {
    float sum = reduce8(_mm256_add_ps(acc0[r], acc1[r]));
    for (int64_t t = k; t < k_dim; ++t) sum += widen(w_row[t]) * x[r * ld + t];
    sums[r] = sum;
  }
}

template <typename W>
using RowsFn = void (*)(const float*, int64_t, int64_t, const W*, int64_t, float*);
constexpr int64_t kPrefetchRows = 4;  // weight rows ahead

// One row of x (decoding, batch 1) against kVecRows weight rows at a time, each row fetched
// kAheadBytes on as it is read. The caller gives rows a quarter of its share apart, so that each of
// the four is a long run through consecutive rows: on InternVL2-1B's 896-wide rows, four adjacent
// rows at a time streamed 13-14 GB/s on two threads (AMD EPYC), four quarter-apart runs 22-23, and
// one row at a time 16-18 (a read of the same bytes and nothing else: 19-23).
constexpr int kVecRows = 4;
constexpr int64_t kAheadBytes = 512;
template <typename W>
TARGET_AVX512 void avx512_vec(const float* x, int64_t k_dim, const W* const* w, float* sums) {
  constexpr int64_t ahead = kAheadBytes / sizeof(W);
  __m512 acc0[kVecRows], acc1[kVecRows];
  for (int i = 0; i < kVecRows; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= k_dim; k += 32) {
    const __m512 x0 = _mm512_loadu_ps(x + k), x1 = _mm512_loadu_ps(x + k + 16);
    for (int i = 0; i < kVecRows; ++i) {
      const W* row = w[i] + k;
      _mm_prefetch(reinterpret_cast<const char*>(row + ahead), _MM_HINT_T0);
      acc0[i] = _mm512_fmadd_ps(load16(row), x0, acc0[i]);
      acc1[i] = _mm512_fmadd_ps(load16(row + 16), x1, acc1[i]);
    }
  }
  for (int i = 0; i < kVecRows; ++i) {
    float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0[i], acc1[i]));
    for (int64_t t = k; t < k_dim; ++t) sum += widen(w[i][t]) * x[t];
    sums[i] = sum;
  }
}

template <typename W>
__attribute__((target("avx2,fma"))) void avx2_vec(const float* x, int64_t k_dim, const W* const* w, float* sums) {
  constexpr int64_t ahead = kAheadBytes / sizeof(W);
  __m256 acc0[kVecRows], acc1[kVecRows];
  for (int i = 0; i < kVecRows; ++i) acc0[i] = acc1[i] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= k_dim; k += 16) {
    const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
    for (int i = 0; i < kVecRows; ++i) {
      const W* row = w[i] + k;
      _mm_prefetch(reinterpret_cast<const char*>(row + ahead), _MM_HINT_T0);
      acc0[i] = _mm256_fmadd_ps(load8(row), x0, acc0[i]);
      acc1[i] = _mm256_fmadd_ps(load8(row + 8), x1, acc1[i]);
    }
  }
  for (int i = 0; i < kVecRows; ++i) {
    float sum = reduce8(_mm256_add_ps(acc0[i], acc1[i]));
    for (int64_t t = k; t < k_dim; ++t) sum += widen(w[i][t]) * x[t];
    sums[i] = sum;
  }
}

template <typename W>
using VecFn = void (*)(const float*, int64_t, const W* const*, float*);

// out [N] = x [K] times w: each thread takes an equal share of the outputs and reads it as four
// runs, rows begin + j, begin + q + j, begin + 2q + j and begin + 3q + j for j < q (a quarter of
// the share), then the rows left over one at a time.
template <typename W>
void vector_product(VecFn<W> vec, RowsFn<W> row_body, const float* x, int64_t k_dim, const W* w, const float* scale,
                    const float* bias, float* out, int64_t n_dim) {
#pragma omp parallel
  {
#ifdef _OPENMP
    const int64_t threads = omp_get_num_threads(), me = omp_get_thread_num();
#else
    const int64_t threads = 1, me = 0;
#endif
    const int64_t begin = n_dim * me / threads, end = n_dim * (me + 1) / threads, quarter = (end - begin) / kVecRows;
    float sums[kVecRows];
    for (int64_t j = 0; j < quarter; ++j) {
      const W* rows[kVecRows];
      for (int i = 0; i < kVecRows; ++i) rows[i] = w + (begin + i * quarter + j) * k_dim;
      vec(x, k_dim, rows, sums);
      for (int i = 0; i < kVecRows; ++i) {
        const int64_t n = begin + i * quarter + j;
        out[n] = finish(sums[i], scale, bias, n);
      }
    }
    for (int64_t n = begin + kVecRows * quarter; n < end; ++n) {
      row_body(x, k_dim, k_dim, w + n * k_dim, kPrefetchRows * k_dim, sums);
      out[n] = finish(sums[0], scale, bias, n);
    }
  }
}

// The rows of x in blocks of `block` (the last one smaller), `bodies[count]` computing `count` rows;
// each weight row is read from memory once and stays in L1 for the following blocks. The inputs go
// kKBlock columns at a time, so that a block of rows stays in L1 too (8 rows of the 4864-wide
// down_proj input do not: the product fell to 8 GB/s, bound by L2).
constexpr int64_t kKBlock = 1024;
template <typename W>
void simd_block(const RowsFn<W>* bodies, int block, const float* x, int64_t rows, int64_t k_dim,
                const W* w, const float* scale, const float* bias, float* out, int64_t n_dim, int64_t n_begin,
                int64_t n_end) {
  float sums[8];
  for (int64_t k0 = 0; k0 < k_dim; k0 += kKBlock) {
    const int64_t k_len = k_dim - k0 < kKBlock ? k_dim - k0 : kKBlock;
    const bool first = k0 == 0, last = k0 + k_len == k_dim;
    for (int64_t n = n_begin; n < n_end; ++n) {
      const W* w_row = w + n * k_dim + k0;
      for (int64_t r0 = 0; r0 < rows; r0 += block) {
        const int count = static_cast<int>(rows - r0 < block ? rows - r0 : block);
        bodies[count](x + r0 * k_dim + k0, k_dim, k_len, w_row, kPrefetchRows * k_dim, sums);
        for (int r = 0; r < count; ++r) {
          float& target = out[(r0 + r) * n_dim + n];
          const float sum = first ? sums[r] : target + sums[r];
          target = last ? finish(sum, scale, bias, n) : sum;
        }
      }
    }
  }
}

template <typename W>
const RowsFn<W> kAvx512Bodies[9] = {nullptr,           avx512_rows<1, W>, avx512_rows<2, W>,
                                    avx512_rows<3, W>, avx512_rows<4, W>, avx512_rows<5, W>,
                                    avx512_rows<6, W>, avx512_rows<7, W>, avx512_rows<8, W>};
template <typename W>
const RowsFn<W> kAvx2Bodies[5] = {nullptr, avx2_rows<1, W>, avx2_rows<2, W>, avx2_rows<3, W>, avx2_rows<4, W>};
#endif  // PADDLEMIX_X86

template <typename W>
void product(const float* x, int64_t rows, int64_t k_dim, const W* w, const float* scale, const float* bias,
             float* out, int64_t n_dim, int isa) {
#ifdef PADDLEMIX_X86
  if (rows == 1 && isa == kAvx512) {
    return vector_product<W>(avx512_vec<W>, kAvx512Bodies<W>[1], x, k_dim, w, scale, bias, out, n_dim);
  }
  if (rows == 1 && isa == kAvx2) {
    return vector_product<W>(avx2_vec<W>, kAvx2Bodies<W>[1], x, k_dim, w, scale, bias, out, n_dim);
  }
#endif
  constexpr int64_t kChunk = 16;  // output features per scheduling unit
  const int64_t chunks = (n_dim + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t n_begin = c * kChunk, n_end = n_begin + kChunk < n_dim ? n_begin + kChunk : n_dim;
#ifdef PADDLEMIX_X86
    if (isa == kAvx512) {
      simd_block<W>(kAvx512Bodies<W>, 8, x, rows, k_dim, w, scale, bias, out, n_dim, n_begin, n_end);
      continue;
    }
    if (isa == kAvx2) {
      simd_block<W>(kAvx2Bodies<W>, 4, x, rows, k_dim, w, scale, bias, out, n_dim, n_begin, n_end);
      continue;
    }
#endif
    plain_block(x, rows, k_dim, w, scale, bias, out, n_dim, n_begin, n_end);
  }
}

void check_isa(int isa) {
#ifdef PADDLEMIX_X86
  PD_CHECK(isa == kPlain || isa == kAvx2 || isa == kAvx512, "isa must be 0 (plain), 1 (avx2) or 2 (avx512)");
#else
  PD_CHECK(isa == kPlain, "only the plain body is built on this CPU architecture");
#endif
}

std::vector<int64_t> out_shape(const std::vector<int64_t>& x_shape, const std::vector<int64_t>& w_shape) {
  std::vector<int64_t> shape(x_shape.begin(), x_shape.end() - 1);
  shape.push_back(w_shape[0]);
  return shape;
}

// ---- row softmax of scale * x and exact (erf) GELU -------------------------------------------------
// exp: Cephes' polynomial on x - n ln2, times 2^n; inputs below kExpLow give 0 (masked scores).
constexpr float kExpLow = -87.33f, kExpHigh = 88.37f;
constexpr float kLog2e = 1.44269504f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kExpP[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                            4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
// erf: Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7).
constexpr float kErfP = 0.3275911f;
constexpr float kErfA[5] = {0.254829592f, -0.284496736f, 1.421413741f, -1.453152027f, 1.061405429f};

inline float exp_plain(float x) { return x < kExpLow ? 0.f : std::exp(x < kExpHigh ? x : kExpHigh); }
inline float gelu_plain(float x) {
  const float z = std::fabs(x) * 0.70710678f, t = 1.f / (1.f + kErfP * z);
  const float poly = t * (kErfA[0] + t * (kErfA[1] + t * (kErfA[2] + t * (kErfA[3] + t * kErfA[4]))));
  const float erf_abs = 1.f - poly * std::exp(-z * z);
  return 0.5f * x * (1.f + (x < 0 ? -erf_abs : erf_abs));
}

#ifdef PADDLEMIX_X86
TARGET_AVX512 inline __m512 exp16(__m512 x) {
  const __mmask16 low = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExpLow), _CMP_LT_OQ);
  x = _mm512_min_ps(x, _mm512_set1_ps(kExpHigh));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kExpP[0]);
  for (int i = 1; i < 6; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpP[i]));
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.f));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~low), _mm512_scalef_ps(y, n));
}
__attribute__((target("avx2,fma"))) inline __m256 exp8(__m256 x) {
  const __m256 low = _mm256_cmp_ps(x, _mm256_set1_ps(kExpLow), _CMP_LT_OQ);
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(kExpHigh)), _mm256_set1_ps(kExpLow));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kExpP[0]);
  for (int i = 1; i < 6; ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP[i]));
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(low, _mm256_mul_ps(y, _mm256_castsi256_ps(bits)));
}

TARGET_AVX512 void softmax_row_avx512(const float* x, float* out, int64_t n, float scale) {
  int64_t i = 0;
  __m512 vmax = _mm512_set1_ps(-INFINITY);
  for (; i + 16 <= n; i += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(x + i));
  float max = _mm512_reduce_max_ps(vmax);
  for (; i < n; ++i) max = x[i] > max ? x[i] : max;
  const __m512 vscale = _mm512_set1_ps(scale), vshift = _mm512_set1_ps(-max * scale);
  __m512 vsum = _mm512_setzero_ps();
  for (i = 0; i + 16 <= n; i += 16) {
    const __m512 e = exp16(_mm512_fmadd_ps(_mm512_loadu_ps(x + i), vscale, vshift));
    _mm512_storeu_ps(out + i, e);
    vsum = _mm512_add_ps(vsum, e);
  }
  float sum = _mm512_reduce_add_ps(vsum);
  for (; i < n; ++i) sum += out[i] = exp_plain((x[i] - max) * scale);
  const __m512 inv = _mm512_set1_ps(1.f / sum);
  for (i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_loadu_ps(out + i), inv));
  for (; i < n; ++i) out[i] *= 1.f / sum;
}

__attribute__((target("avx2,fma"))) void softmax_row_avx2(const float* x, float* out, int64_t n, float scale) {
  int64_t i = 0;
  __m256 vmax = _mm256_set1_ps(-INFINITY);
  for (; i + 8 <= n; i += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i));
  float lanes[8];
  _mm256_storeu_ps(lanes, vmax);
  float max = lanes[0];
  for (int l = 1; l < 8; ++l) max = lanes[l] > max ? lanes[l] : max;
  for (; i < n; ++i) max = x[i] > max ? x[i] : max;
  const __m256 vscale = _mm256_set1_ps(scale), vshift = _mm256_set1_ps(-max * scale);
  __m256 vsum = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) {
    const __m256 e = exp8(_mm256_fmadd_ps(_mm256_loadu_ps(x + i), vscale, vshift));
    _mm256_storeu_ps(out + i, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  float sum = reduce8(vsum);
  for (; i < n; ++i) sum += out[i] = exp_plain((x[i] - max) * scale);
  const __m256 inv = _mm256_set1_ps(1.f / sum);
  for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(out + i), inv));
  for (; i < n; ++i) out[i] *= 1.f / sum;
}

TARGET_AVX512 void gelu_avx512(const float* x, float* out, int64_t n) {
  int64_t i = 0;
  const __m512 sign = _mm512_set1_ps(-0.f), one = _mm512_set1_ps(1.f);
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __m512 z = _mm512_mul_ps(_mm512_abs_ps(v), _mm512_set1_ps(0.70710678f));
    const __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(z, _mm512_set1_ps(kErfP), one));
    __m512 poly = _mm512_set1_ps(kErfA[4]);
    for (int k = 3; k >= 0; --k) poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(kErfA[k]));
    poly = _mm512_mul_ps(poly, t);
    const __m512 erf_abs = _mm512_fnmadd_ps(poly, exp16(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), z), z)), one);
    const __m512 erf = _mm512_castsi512_ps(_mm512_or_si512(  // |erf| with the sign of v (AVX-512F only)
        _mm512_castps_si512(erf_abs), _mm512_and_si512(_mm512_castps_si512(sign), _mm512_castps_si512(v))));
    _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), v), _mm512_add_ps(one, erf)));
  }
  for (; i < n; ++i) out[i] = gelu_plain(x[i]);
}

__attribute__((target("avx2,fma"))) void gelu_avx2(const float* x, float* out, int64_t n) {
  int64_t i = 0;
  const __m256 sign = _mm256_set1_ps(-0.f), one = _mm256_set1_ps(1.f);
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 z = _mm256_mul_ps(_mm256_andnot_ps(sign, v), _mm256_set1_ps(0.70710678f));
    const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(z, _mm256_set1_ps(kErfP), one));
    __m256 poly = _mm256_set1_ps(kErfA[4]);
    for (int k = 3; k >= 0; --k) poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(kErfA[k]));
    poly = _mm256_mul_ps(poly, t);
    const __m256 erf_abs = _mm256_fnmadd_ps(poly, exp8(_mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), z), z)), one);
    const __m256 erf = _mm256_or_ps(erf_abs, _mm256_and_ps(sign, v));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), v), _mm256_add_ps(one, erf)));
  }
  for (; i < n; ++i) out[i] = gelu_plain(x[i]);
}

// RMSNorm of one row: s = x (+ residual, stored in `sum`), out = (s / rms(s)) * w, the mean of squares in float32.
TARGET_AVX512 void rms_norm_row_avx512(const float* x, const float* residual, const float* w,
                                       float eps, float* out, float* sum, int64_t n) {
  const float* s = x;
  int64_t i = 0;
  if (residual) {
    for (; i + 16 <= n; i += 16)
      _mm512_storeu_ps(sum + i, _mm512_add_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(residual + i)));
    for (; i < n; ++i) sum[i] = x[i] + residual[i];
    s = sum;
  }
  __m512 acc = _mm512_setzero_ps();
  for (i = 0; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(s + i), _mm512_loadu_ps(s + i), acc);
  float squares = _mm512_reduce_add_ps(acc);
  for (; i < n; ++i) squares += s[i] * s[i];
  const float inv = 1.f / std::sqrt(squares / static_cast<float>(n) + eps);
  const __m512 vinv = _mm512_set1_ps(inv);
  for (i = 0; i + 16 <= n; i += 16)
    _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(s + i), vinv), _mm512_loadu_ps(w + i)));
  for (; i < n; ++i) out[i] = s[i] * inv * w[i];
}

__attribute__((target("avx2,fma"))) void rms_norm_row_avx2(const float* x, const float* residual, const float* w,
                                                           float eps, float* out, float* sum, int64_t n) {
  const float* s = x;
  int64_t i = 0;
  if (residual) {
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(sum + i, _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(residual + i)));
    for (; i < n; ++i) sum[i] = x[i] + residual[i];
    s = sum;
  }
  __m256 acc = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(s + i), _mm256_loadu_ps(s + i), acc);
  float squares = reduce8(acc);
  for (; i < n; ++i) squares += s[i] * s[i];
  const float inv = 1.f / std::sqrt(squares / static_cast<float>(n) + eps);
  const __m256 vinv = _mm256_set1_ps(inv);
  for (i = 0; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(s + i), vinv), _mm256_loadu_ps(w + i)));
  for (; i < n; ++i) out[i] = s[i] * inv * w[i];
}

// silu(gate) * up = gate / (1 + exp(-gate)) * up, for one row of [gate | up].
TARGET_AVX512 void swiglu_avx512(const float* gate, const float* up, float* out, int64_t n) {
  int64_t i = 0;
  const __m512 one = _mm512_set1_ps(1.f);
  for (; i + 16 <= n; i += 16) {
    const __m512 g = _mm512_loadu_ps(gate + i);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
    _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), _mm512_loadu_ps(up + i)));
  }
  for (; i < n; ++i) out[i] = gate[i] / (1.f + exp_plain(-gate[i])) * up[i];
}

__attribute__((target("avx2,fma"))) void swiglu_avx2(const float* gate, const float* up, float* out, int64_t n) {
  int64_t i = 0;
  const __m256 one = _mm256_set1_ps(1.f);
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) out[i] = gate[i] / (1.f + exp_plain(-gate[i])) * up[i];
}
#endif  // PADDLEMIX_X86

void softmax_row_plain(const float* x, float* out, int64_t n, float scale) {
  float max = -INFINITY, sum = 0.f;
  for (int64_t i = 0; i < n; ++i) max = x[i] > max ? x[i] : max;
  for (int64_t i = 0; i < n; ++i) sum += out[i] = exp_plain((x[i] - max) * scale);
  for (int64_t i = 0; i < n; ++i) out[i] /= sum;
}

void rms_norm_row_plain(const float* x, const float* residual, const float* w, float eps, float* out, float* sum,
                        int64_t n) {
  const float* s = x;
  if (residual) {
    for (int64_t i = 0; i < n; ++i) sum[i] = x[i] + residual[i];
    s = sum;
  }
  float squares = 0.f;
  for (int64_t i = 0; i < n; ++i) squares += s[i] * s[i];
  const float inv = 1.f / std::sqrt(squares / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = s[i] * inv * w[i];
}

// The softmax of one row by the body `isa` names (`out` may be `x`).
void softmax_row(int isa, const float* x, float* out, int64_t n, float scale) {
#ifdef PADDLEMIX_X86
  if (isa == kAvx512) return softmax_row_avx512(x, out, n, scale);
  if (isa == kAvx2) return softmax_row_avx2(x, out, n, scale);
#endif
  softmax_row_plain(x, out, n, scale);
}

// RMSNorm of one row (see rms_norm_row_avx512) by the body `isa` names.
void rms_norm_row(int isa, const float* x, const float* residual, const float* w, float eps, float* out, float* sum,
                  int64_t n) {
#ifdef PADDLEMIX_X86
  if (isa == kAvx512) return rms_norm_row_avx512(x, residual, w, eps, out, sum, n);
  if (isa == kAvx2) return rms_norm_row_avx2(x, residual, w, eps, out, sum, n);
#endif
  rms_norm_row_plain(x, residual, w, eps, out, sum, n);
}

// silu(gate) * up of one row by the body `isa` names.
void swiglu_row(int isa, const float* gate, const float* up, float* out, int64_t n) {
#ifdef PADDLEMIX_X86
  if (isa == kAvx512) return swiglu_avx512(gate, up, out, n);
  if (isa == kAvx2) return swiglu_avx2(gate, up, out, n);
#endif
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.f + exp_plain(-gate[i])) * up[i];
}

// out [rows, N] = x [rows, K] times a bf16 weight, or an int8 one with `scale` [N], [N, K], plus `bias`
// [N] (null: none).
void project(const float* x, int64_t rows, const paddle::Tensor& w, const float* scale, const float* bias, float* out,
             int isa) {
  const int64_t n_dim = w.shape()[0], k_dim = w.shape()[1];
  if (w.dtype() == paddle::DataType::BFLOAT16) {
    product(x, rows, k_dim, reinterpret_cast<const uint16_t*>(w.data<paddle::bfloat16>()), nullptr, bias, out, n_dim,
            isa);
  } else {
    PD_CHECK(w.dtype() == paddle::DataType::INT8 && scale, "the weight must be bfloat16, or int8 with a scale");
    product(x, rows, k_dim, w.data<int8_t>(), scale, bias, out, n_dim, isa);
  }
}

// The data of an optional input (float32 by default; bool for masks): empty means none.
template <typename T = float>
const T* data_or_null(const paddle::Tensor& t) { return t.numel() ? t.data<T>() : nullptr; }

// x [..., K] times the weight [N, K] (see `project`); `bias` [N], or empty for none.
paddle::Tensor linear(const paddle::Tensor& x, const paddle::Tensor& w, const float* scale, const paddle::Tensor& bias,
                      int isa) {
  check_isa(isa);
  PD_CHECK(x.is_cpu() && w.is_cpu(), "lowp_linear runs on CPU tensors");
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32, "x must be float32");
  PD_CHECK(w.shape().size() == 2 && x.shape().back() == w.shape()[1], "x [..., K] needs a weight [N, K]");
  const int64_t k_dim = w.shape()[1], n_dim = w.shape()[0], rows = k_dim ? x.numel() / k_dim : 0;
  PD_CHECK(bias.numel() == 0 || (bias.dtype() == paddle::DataType::FLOAT32 && bias.numel() == n_dim),
           "the bias must be float32 [N], or empty for none");
  auto out = paddle::empty(out_shape(x.shape(), w.shape()), paddle::DataType::FLOAT32, paddle::CPUPlace());
  project(x.data<float>(), rows, w, scale, data_or_null(bias), out.data<float>(), isa);
  return out;
}

// Rotate-half RoPE of one head vector x [D] into y with that position's cos/sin [D].
inline void rotate_half(const float* x, const float* c, const float* s, float* y, int64_t dim) {
  const int64_t half = dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    y[i] = x[i] * c[i] - x[i + half] * s[i];
    y[i + half] = x[i + half] * c[i + half] + x[i] * s[i + half];
  }
}

paddle::Tensor float32_like(const paddle::Tensor& x, const char* what) {
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32, what, " takes a float32 CPU tensor");
  return paddle::empty(x.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
}

}  // namespace

std::vector<paddle::Tensor> Bf16Linear(const paddle::Tensor& x, const paddle::Tensor& w, const paddle::Tensor& bias,
                                       int isa) {
  PD_CHECK(w.dtype() == paddle::DataType::BFLOAT16, "the weight must be bfloat16");
  return {linear(x, w, nullptr, bias, isa)};
}

std::vector<paddle::Tensor> Int8Linear(const paddle::Tensor& x, const paddle::Tensor& w, const paddle::Tensor& scale,
                                       const paddle::Tensor& bias, int isa) {
  PD_CHECK(scale.dtype() == paddle::DataType::FLOAT32 && scale.numel() == w.shape()[0],
           "scale must be float32 with one value per output feature");
  PD_CHECK(w.dtype() == paddle::DataType::INT8, "the weight must be int8");
  return {linear(x, w, scale.data<float>(), bias, isa)};
}

std::vector<std::vector<int64_t>> LinearShape2(const std::vector<int64_t>& x_shape,
                                              const std::vector<int64_t>& w_shape) {
  return {out_shape(x_shape, w_shape)};
}
std::vector<std::vector<int64_t>> LinearShape3(const std::vector<int64_t>& x_shape,
                                                    const std::vector<int64_t>& w_shape,
                                                    const std::vector<int64_t>&) {
  return {out_shape(x_shape, w_shape)};
}
std::vector<paddle::DataType> Float32Out2(const paddle::DataType&, const paddle::DataType&) {
  return {paddle::DataType::FLOAT32};
}
std::vector<paddle::DataType> Float32Out3(const paddle::DataType&, const paddle::DataType&,
                                               const paddle::DataType&) {
  return {paddle::DataType::FLOAT32};
}
std::vector<std::vector<int64_t>> LinearShape4(const std::vector<int64_t>& x_shape,
                                                        const std::vector<int64_t>& w_shape,
                                                        const std::vector<int64_t>&, const std::vector<int64_t>&) {
  return {out_shape(x_shape, w_shape)};
}
std::vector<paddle::DataType> Float32Out4(const paddle::DataType&, const paddle::DataType&,
                                                   const paddle::DataType&, const paddle::DataType&) {
  return {paddle::DataType::FLOAT32};
}

PD_BUILD_OP(paddlemix_bf16_linear)
    .Inputs({"X", "W", "Bias"})
    .Outputs({"Out"})
    .Attrs({"isa: int"})
    .SetKernelFn(PD_KERNEL(Bf16Linear))
    .SetInferShapeFn(PD_INFER_SHAPE(LinearShape3))
    .SetInferDtypeFn(PD_INFER_DTYPE(Float32Out3));

PD_BUILD_OP(paddlemix_int8_linear)
    .Inputs({"X", "W", "Scale", "Bias"})
    .Outputs({"Out"})
    .Attrs({"isa: int"})
    .SetKernelFn(PD_KERNEL(Int8Linear))
    .SetInferShapeFn(PD_INFER_SHAPE(LinearShape4))
    .SetInferDtypeFn(PD_INFER_DTYPE(Float32Out4));

std::vector<paddle::Tensor> ScaledSoftmax(const paddle::Tensor& x, float scale, int isa) {
  check_isa(isa);
  auto out = float32_like(x, "scaled_softmax");
  const int64_t n = x.shape().back(), rows = n ? x.numel() / n : 0;
  const float* in = x.data<float>();
  float* dst = out.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) softmax_row(isa, in + r * n, dst + r * n, n, scale);
  return {out};
}

// The exact GELU of n floats by the body `isa` names (`out` may be `x`).
void gelu_span(int isa, const float* x, float* out, int64_t n) {
#ifdef PADDLEMIX_X86
  if (isa == kAvx512) return gelu_avx512(x, out, n);
  if (isa == kAvx2) return gelu_avx2(x, out, n);
#endif
  for (int64_t i = 0; i < n; ++i) out[i] = gelu_plain(x[i]);
}

std::vector<paddle::Tensor> Gelu(const paddle::Tensor& x, int isa) {
  check_isa(isa);
  auto out = float32_like(x, "gelu");
  constexpr int64_t kChunk = 1 << 14;
  const int64_t n = x.numel(), chunks = (n + kChunk - 1) / kChunk;
  const float* in = x.data<float>();
  float* dst = out.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunk, count = begin + kChunk < n ? kChunk : n - begin;
    gelu_span(isa, in + begin, dst + begin, count);
  }
  return {out};
}

// SwiGLU of x [..., 2I] = [gate | up] -> [..., I] (Paddle's CPU swiglu took 0.5 ms for 8 rows of 4864).
std::vector<paddle::Tensor> Swiglu(const paddle::Tensor& x, int isa) {
  check_isa(isa);
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32, "swiglu takes a float32 CPU tensor");
  PD_CHECK(x.shape().back() % 2 == 0, "swiglu needs [gate | up] of even width");
  std::vector<int64_t> shape = x.shape();
  const int64_t n = shape.back() / 2, rows = n ? x.numel() / (2 * n) : 0;
  shape.back() = n;
  auto out = paddle::empty(shape, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* in = x.data<float>();
  float* dst = out.data<float>();
#pragma omp parallel for schedule(static) if (rows * n > (1 << 16))
  for (int64_t r = 0; r < rows; ++r) swiglu_row(isa, in + r * 2 * n, in + r * 2 * n + n, dst + r * n, n);
  return {out};
}

std::vector<std::vector<int64_t>> HalfWidthShape(const std::vector<int64_t>& x_shape) {
  std::vector<int64_t> shape = x_shape;
  shape.back() /= 2;
  return {shape};
}

// sum = x + y * scale for one row and, with a weight, out = LayerNorm(sum) (mean and variance in
// float32, two passes). One source: the AVX-512 and AVX2 bodies are this, compiled for their target.
__attribute__((always_inline)) inline void scaled_add_row(const float* x, const float* y, const float* scale,
                                                          const float* w, const float* b, float eps, float* sum,
                                                          float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) sum[i] = x[i] + y[i] * scale[i];
  if (!w) return;
  constexpr int64_t kLanes = 16;  // partial sums the compiler keeps in one vector register
  float lanes[kLanes] = {0.f}, mean = 0.f, var = 0.f;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) lanes[j] += sum[i + j];
  }
  for (; i < n; ++i) mean += sum[i];
  for (int64_t j = 0; j < kLanes; ++j) mean += lanes[j];
  mean /= static_cast<float>(n);
  for (int64_t j = 0; j < kLanes; ++j) lanes[j] = 0.f;
  for (i = 0; i + kLanes <= n; i += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) lanes[j] += (sum[i + j] - mean) * (sum[i + j] - mean);
  }
  for (; i < n; ++i) var += (sum[i] - mean) * (sum[i] - mean);
  for (int64_t j = 0; j < kLanes; ++j) var += lanes[j];
  const float inv = 1.f / std::sqrt(var / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = (sum[i] - mean) * inv * w[i] + b[i];
}

using ScaledAddFn = void (*)(const float*, const float*, const float*, const float*, const float*, float, float*,
                             float*, int64_t);
void scaled_add_plain(const float* x, const float* y, const float* scale, const float* w, const float* b, float eps,
                      float* sum, float* out, int64_t n) {
  scaled_add_row(x, y, scale, w, b, eps, sum, out, n);
}
#ifdef PADDLEMIX_X86
TARGET_AVX512 void scaled_add_avx512(const float* x, const float* y, const float* scale,
                                     const float* w, const float* b, float eps, float* sum,
                                     float* out, int64_t n) {
  scaled_add_row(x, y, scale, w, b, eps, sum, out, n);
}
__attribute__((target("avx2,fma"))) void scaled_add_avx2(const float* x, const float* y, const float* scale,
                                                        const float* w, const float* b, float eps, float* sum,
                                                        float* out, int64_t n) {
  scaled_add_row(x, y, scale, w, b, eps, sum, out, n);
}
#endif

// x + y * scale over the last axis (InternViT's layer-scaled residual); with `w`, also its LayerNorm.
std::vector<paddle::Tensor> scaled_add(const paddle::Tensor& x, const paddle::Tensor& y, const paddle::Tensor& scale,
                                       const paddle::Tensor* w, const paddle::Tensor* b, float eps, int isa) {
  check_isa(isa);
  auto sum = float32_like(x, "scaled_add");
  const int64_t n = x.shape().back(), rows = n ? x.numel() / n : 0;
  PD_CHECK(y.dtype() == paddle::DataType::FLOAT32 && y.shape() == x.shape(), "y must be float32 and shaped like x");
  PD_CHECK(scale.dtype() == paddle::DataType::FLOAT32 && scale.numel() == n, "the scale must be float32 [C]");
  PD_CHECK(!w || (w->dtype() == paddle::DataType::FLOAT32 && w->numel() == n && b->dtype() == w->dtype() &&
                  b->numel() == n), "the norm's weight and bias must be float32 [C]");
  paddle::Tensor out = w ? float32_like(x, "scaled_add") : paddle::Tensor();
  ScaledAddFn body = scaled_add_plain;
#ifdef PADDLEMIX_X86
  if (isa == kAvx512) body = scaled_add_avx512;
  if (isa == kAvx2) body = scaled_add_avx2;
#endif
  const float *xd = x.data<float>(), *yd = y.data<float>(), *sd = scale.data<float>();
  const float *wd = w ? w->data<float>() : nullptr, *bd = w ? b->data<float>() : nullptr;
  float *sumd = sum.data<float>(), *od = w ? out.data<float>() : nullptr;
#pragma omp parallel for schedule(static) if (rows > 16)
  for (int64_t r = 0; r < rows; ++r) {
    body(xd + r * n, yd + r * n, sd, wd, bd, eps, sumd + r * n, od ? od + r * n : nullptr, n);
  }
  if (w) return {out, sum};
  return {sum};
}

std::vector<paddle::Tensor> ScaledAdd(const paddle::Tensor& x, const paddle::Tensor& y, const paddle::Tensor& scale,
                                      int isa) {
  return scaled_add(x, y, scale, nullptr, nullptr, 0.f, isa);
}
std::vector<paddle::Tensor> ScaledAddLayerNorm(const paddle::Tensor& x, const paddle::Tensor& y,
                                               const paddle::Tensor& scale, const paddle::Tensor& w,
                                               const paddle::Tensor& b, float eps, int isa) {
  return scaled_add(x, y, scale, &w, &b, eps, isa);
}
std::vector<std::vector<int64_t>> ScaledAddShape(const std::vector<int64_t>& x_shape, const std::vector<int64_t>&,
                                                 const std::vector<int64_t>&) {
  return {x_shape};
}
std::vector<std::vector<int64_t>> ScaledAddLayerNormShape(const std::vector<int64_t>& x_shape,
                                                          const std::vector<int64_t>&, const std::vector<int64_t>&,
                                                          const std::vector<int64_t>&, const std::vector<int64_t>&) {
  return {x_shape, x_shape};
}
std::vector<paddle::DataType> ScaledAddDtype(const paddle::DataType& x_dtype, const paddle::DataType&,
                                             const paddle::DataType&) {
  return {x_dtype};
}
std::vector<paddle::DataType> ScaledAddLayerNormDtype(const paddle::DataType& x_dtype, const paddle::DataType&,
                                                      const paddle::DataType&, const paddle::DataType&,
                                                      const paddle::DataType&) {
  return {x_dtype, x_dtype};
}

std::vector<std::vector<int64_t>> SameShape(const std::vector<int64_t>& x_shape) { return {x_shape}; }
std::vector<paddle::DataType> SameDtype(const paddle::DataType& x_dtype) { return {x_dtype}; }

PD_BUILD_OP(paddlemix_scaled_softmax)
    .Inputs({"X"})
    .Outputs({"Out"})
    .Attrs({"scale: float", "isa: int"})
    .SetKernelFn(PD_KERNEL(ScaledSoftmax))
    .SetInferShapeFn(PD_INFER_SHAPE(SameShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(SameDtype));

PD_BUILD_OP(paddlemix_gelu)
    .Inputs({"X"})
    .Outputs({"Out"})
    .Attrs({"isa: int"})
    .SetKernelFn(PD_KERNEL(Gelu))
    .SetInferShapeFn(PD_INFER_SHAPE(SameShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(SameDtype));

PD_BUILD_OP(paddlemix_swiglu)
    .Inputs({"X"})
    .Outputs({"Out"})
    .Attrs({"isa: int"})
    .SetKernelFn(PD_KERNEL(Swiglu))
    .SetInferShapeFn(PD_INFER_SHAPE(HalfWidthShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(SameDtype));

PD_BUILD_OP(paddlemix_scaled_add)
    .Inputs({"X", "Y", "Scale"})
    .Outputs({"Sum"})
    .Attrs({"isa: int"})
    .SetKernelFn(PD_KERNEL(ScaledAdd))
    .SetInferShapeFn(PD_INFER_SHAPE(ScaledAddShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(ScaledAddDtype));

PD_BUILD_OP(paddlemix_scaled_add_layer_norm)
    .Inputs({"X", "Y", "Scale", "W", "B"})
    .Outputs({"Out", "Sum"})
    .Attrs({"eps: float", "isa: int"})
    .SetKernelFn(PD_KERNEL(ScaledAddLayerNorm))
    .SetInferShapeFn(PD_INFER_SHAPE(ScaledAddLayerNormShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(ScaledAddLayerNormDtype));

#ifdef PADDLEMIX_MKL
// Unmasked attention over q, k, v [B, L, H, D] -> [B, L, H, D]. Per (batch, head, block of 128
// queries) the scores go to a per-thread buffer that stays in L2: one sgemm Q K^T, the row softmax
// in place, one sgemm P V written straight into the output rows. The [H, L, L] score tensor of the
// plain ops (67 MB per InternViT layer) is never made. The head's keys and values are first copied
// to contiguous per-thread buffers (once per head a thread meets): MKL's products over the strided
// head columns took 30-33 ms per InternViT layer, 24-27 ms after the copy (AMD EPYC, AVX2).
// q, k, v: rows of `ld` floats, head h at column h * dim; out [B, L, H * dim].
void attention(const float* qd, const float* kd, const float* vd, int64_t ld, int64_t batch, int64_t length,
               int64_t heads, int64_t dim, float scale, int isa, float* od) {
  constexpr int64_t kRows = 128;
  const int64_t blocks = (length + kRows - 1) / kRows, tasks = batch * heads * blocks, out_ld = heads * dim;
#pragma omp parallel
  {
    std::vector<float> scores(kRows * length), keys(length * dim), values(length * dim);
    int64_t copied = -1;  // the (batch, head) whose keys and values the buffers hold
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t b = task / (heads * blocks), h = task / blocks % heads, r0 = task % blocks * kRows;
      const int64_t rows = length - r0 < kRows ? length - r0 : kRows;
      const int64_t head = b * length * ld + h * dim;
      if (copied != task / blocks) {
        for (int64_t t = 0; t < length; ++t) {
          std::memcpy(keys.data() + t * dim, kd + head + t * ld, dim * sizeof(float));
          std::memcpy(values.data() + t * dim, vd + head + t * ld, dim * sizeof(float));
        }
        copied = task / blocks;
      }
      cblas_sgemm(kRowMajor, kNoTrans, kTrans, rows, length, dim, 1.f, qd + head + r0 * ld, ld, keys.data(), dim,
                  0.f, scores.data(), length);
      for (int64_t r = 0; r < rows; ++r) softmax_row(isa, scores.data() + r * length, scores.data() + r * length,
                                                     length, scale);
      cblas_sgemm(kRowMajor, kNoTrans, kNoTrans, rows, dim, length, 1.f, scores.data(), length, values.data(), dim,
                  0.f, od + b * length * out_ld + h * dim + r0 * out_ld, out_ld);
    }
  }
}

std::vector<paddle::Tensor> Attention(const paddle::Tensor& q, const paddle::Tensor& k, const paddle::Tensor& v,
                                      float scale, int isa) {
  check_isa(isa);
  PD_CHECK(q.shape().size() == 4 && q.shape() == k.shape() && q.shape() == v.shape(), "q, k, v must be [B, L, H, D]");
  auto out = float32_like(q, "attention");
  const int64_t batch = q.shape()[0], length = q.shape()[1], heads = q.shape()[2], dim = q.shape()[3];
  attention(q.data<float>(), k.data<float>(), v.data<float>(), heads * dim, batch, length, heads, dim, scale, isa,
            out.data<float>());
  return {out};
}

// The same over the packed projection qkv [B, L, 3 H D] ([q | k | v]), with no copies of its thirds.
std::vector<paddle::Tensor> PackedAttention(const paddle::Tensor& qkv, int heads, float scale, int isa) {
  check_isa(isa);
  PD_CHECK(qkv.is_cpu() && qkv.dtype() == paddle::DataType::FLOAT32 && qkv.shape().size() == 3 &&
               qkv.shape()[2] % (3 * heads) == 0, "qkv must be float32 [B, L, 3 H D]");
  const int64_t batch = qkv.shape()[0], length = qkv.shape()[1], width = qkv.shape()[2] / 3, dim = width / heads;
  auto out = paddle::empty({batch, length, width}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* base = qkv.data<float>();
  attention(base, base + width, base + 2 * width, 3 * width, batch, length, heads, dim, scale, isa, out.data<float>());
  return {out};
}

std::vector<std::vector<int64_t>> PackedAttentionShape(const std::vector<int64_t>& qkv_shape, int, float, int) {
  return {{qkv_shape[0], qkv_shape[1], qkv_shape[2] / 3}};
}

PD_BUILD_OP(paddlemix_packed_attention)
    .Inputs({"QKV"})
    .Outputs({"Out"})
    .Attrs({"heads: int", "scale: float", "isa: int"})
    .SetKernelFn(PD_KERNEL(PackedAttention))
    .SetInferShapeFn(PD_INFER_SHAPE(PackedAttentionShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(SameDtype));

std::vector<std::vector<int64_t>> AttentionShape(const std::vector<int64_t>& q_shape, const std::vector<int64_t>&,
                                                 const std::vector<int64_t>&) {
  return {q_shape};
}
std::vector<paddle::DataType> AttentionDtype(const paddle::DataType& q_dtype, const paddle::DataType&,
                                             const paddle::DataType&) {
  return {q_dtype};
}

PD_BUILD_OP(paddlemix_attention)
    .Inputs({"Q", "K", "V"})
    .Outputs({"Out"})
    .Attrs({"scale: float", "isa: int"})
    .SetKernelFn(PD_KERNEL(Attention))
    .SetInferShapeFn(PD_INFER_SHAPE(AttentionShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(AttentionDtype));

// x [..., K] float32 times a bf16 weight [N, K] for many rows (prefill, the ViT): each thread widens
// its share of the weight rows into a buffer it keeps between calls, then one single-threaded MKL
// sgemm multiplies all rows by it (with `gelu`, the exact GELU follows on the thread's columns). The
// weight stays bf16. One sgemm over all rows, which MKL blocks itself, was 8-21% faster than one per
// 256 rows with the GELU on each block while in cache (the widened weight was read once per block).
paddle::Tensor bf16_gemm(const paddle::Tensor& x, const paddle::Tensor& w, const float* bias, bool gelu, int isa) {
  check_isa(isa);
  PD_CHECK(x.is_cpu() && w.is_cpu() && x.dtype() == paddle::DataType::FLOAT32, "x must be a float32 CPU tensor");
  PD_CHECK(w.dtype() == paddle::DataType::BFLOAT16 && w.shape().size() == 2 && x.shape().back() == w.shape()[1],
           "x [..., K] needs a bfloat16 weight [N, K]");
  const int64_t k_dim = w.shape()[1], n_dim = w.shape()[0], rows = k_dim ? x.numel() / k_dim : 0;
  auto out = paddle::empty(out_shape(x.shape(), w.shape()), paddle::DataType::FLOAT32, paddle::CPUPlace());
  const uint16_t* wd = reinterpret_cast<const uint16_t*>(w.data<paddle::bfloat16>());
  const float* xd = x.data<float>();
  float* od = out.data<float>();
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), me = omp_get_thread_num();
    const int64_t share = ((n_dim + threads - 1) / threads + 15) / 16 * 16;
    const int64_t n0 = me * share, cols = n0 < n_dim ? (n_dim - n0 < share ? n_dim - n0 : share) : 0;
    if (cols > 0 && rows > 0) {
      thread_local std::vector<float> widened;
      if (static_cast<int64_t>(widened.size()) < cols * k_dim) widened.resize(cols * k_dim);
      const uint16_t* src = wd + n0 * k_dim;
      for (int64_t i = 0; i < cols * k_dim; ++i) widened[i] = widen(src[i]);
      float* thread_out = od + n0;
      if (bias) {  // the bias goes in first and the product is added to it (beta = 1)
        for (int64_t r = 0; r < rows; ++r) std::memcpy(thread_out + r * n_dim, bias + n0, cols * sizeof(float));
      }
      cblas_sgemm(kRowMajor, kNoTrans, kTrans, rows, cols, k_dim, 1.f, xd, k_dim, widened.data(), k_dim,
                  bias ? 1.f : 0.f, thread_out, n_dim);
      if (gelu) {
        for (int64_t r = 0; r < rows; ++r) gelu_span(isa, thread_out + r * n_dim, thread_out + r * n_dim, cols);
      }
    }
  }
  return out;
}

std::vector<paddle::Tensor> Bf16Gemm(const paddle::Tensor& x, const paddle::Tensor& w, int isa) {
  return {bf16_gemm(x, w, nullptr, false, isa)};
}

std::vector<paddle::Tensor> Bf16GemmBias(const paddle::Tensor& x, const paddle::Tensor& w, const paddle::Tensor& b,
                                         int isa) {
  PD_CHECK(b.dtype() == paddle::DataType::FLOAT32 && b.numel() == w.shape()[0], "the bias must be float32 [N]");
  return {bf16_gemm(x, w, b.data<float>(), false, isa)};
}

std::vector<paddle::Tensor> Bf16GemmBiasGelu(const paddle::Tensor& x, const paddle::Tensor& w, const paddle::Tensor& b,
                                             int isa) {
  PD_CHECK(b.dtype() == paddle::DataType::FLOAT32 && b.numel() == w.shape()[0], "the bias must be float32 [N]");
  return {bf16_gemm(x, w, b.data<float>(), true, isa)};
}

PD_BUILD_OP(paddlemix_bf16_gemm)
    .Inputs({"X", "W"})
    .Outputs({"Out"})
    .Attrs({"isa: int"})
    .SetKernelFn(PD_KERNEL(Bf16Gemm))
    .SetInferShapeFn(PD_INFER_SHAPE(LinearShape2))
    .SetInferDtypeFn(PD_INFER_DTYPE(Float32Out2));

PD_BUILD_OP(paddlemix_bf16_gemm_bias)
    .Inputs({"X", "W", "B"})
    .Outputs({"Out"})
    .Attrs({"isa: int"})
    .SetKernelFn(PD_KERNEL(Bf16GemmBias))
    .SetInferShapeFn(PD_INFER_SHAPE(LinearShape3))
    .SetInferDtypeFn(PD_INFER_DTYPE(Float32Out3));

PD_BUILD_OP(paddlemix_bf16_gemm_bias_gelu)
    .Inputs({"X", "W", "B"})
    .Outputs({"Out"})
    .Attrs({"isa: int"})
    .SetKernelFn(PD_KERNEL(Bf16GemmBiasGelu))
    .SetInferShapeFn(PD_INFER_SHAPE(LinearShape3))
    .SetInferDtypeFn(PD_INFER_DTYPE(Float32Out3));

// Rotary grouped-query attention for T new tokens per row after `past` cached ones (a prefill):
// qkv [B, T, (H + 2 KV) D], cos/sin [B, T, D]; the keys and values of positions past..past+T-1
// are written into the caches [B, KV, L, D] (in place). `mask` bool [B, 1, T, past + T] (true =
// attend) or empty: then causal, query t sees keys 0..past+t. Per (row, head, block of 64 queries)
// one sgemm Q K^T into a per-thread buffer, the row softmax, one sgemm P V into the output
// [B, T, H D]. Masked scores are -1e30, as in the plain ops (a row with no key left is uniform).
std::vector<paddle::Tensor> PrefillAttention(const paddle::Tensor& qkv, const paddle::Tensor& cos,
                                             const paddle::Tensor& sin, paddle::Tensor& k_cache,
                                             paddle::Tensor& v_cache, const paddle::Tensor& mask, int heads,
                                             int kv_heads, int past, int isa) {
  check_isa(isa);
  const paddle::Tensor* inputs[] = {&qkv, &cos, &sin, &k_cache, &v_cache};
  for (const paddle::Tensor* t : inputs) {
    PD_CHECK(t->is_cpu() && t->dtype() == paddle::DataType::FLOAT32, "prefill_attention takes float32 CPU tensors");
  }
  PD_CHECK(k_cache.shape().size() == 4 && k_cache.shape() == v_cache.shape(), "the caches must be [B, KV, L, D]");
  const int64_t batch = k_cache.shape()[0], length = k_cache.shape()[2], dim = k_cache.shape()[3];
  PD_CHECK(kv_heads == k_cache.shape()[1] && heads % kv_heads == 0 && dim % 2 == 0, "heads do not match the cache");
  PD_CHECK(qkv.shape().size() == 3 && qkv.shape()[0] == batch && qkv.shape()[2] == (heads + 2 * kv_heads) * dim,
           "qkv must be [B, T, (H + 2 KV) D]");
  const int64_t steps = qkv.shape()[1], keys = past + steps, width = (heads + 2 * kv_heads) * dim;
  PD_CHECK(cos.numel() == batch * steps * dim && sin.numel() == batch * steps * dim, "cos and sin must be [B, T, D]");
  PD_CHECK(past >= 0 && keys <= length, "the cache is too short");
  PD_CHECK(mask.numel() == 0 || (mask.dtype() == paddle::DataType::BOOL && mask.numel() == batch * steps * keys),
           "the mask must be bool [B, 1, T, past + T], or empty for causal");
  auto out = paddle::empty({batch, steps, heads * dim}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float *qd = qkv.data<float>(), *cd = cos.data<float>(), *sd = sin.data<float>();
  const bool* md = data_or_null<bool>(mask);
  float *kd = k_cache.data<float>(), *vd = v_cache.data<float>(), *od = out.data<float>();
  const int64_t groups = heads / kv_heads;
  const float scale = 1.f / std::sqrt(static_cast<float>(dim));
  auto rotate = [dim](const float* x, const float* c, const float* s, float* y) { rotate_half(x, c, s, y, dim); };
#pragma omp parallel for schedule(static)
  for (int64_t task = 0; task < batch * kv_heads * steps; ++task) {
    const int64_t b = task / (kv_heads * steps), g = task / steps % kv_heads, t = task % steps;
    const float* row = qd + (b * steps + t) * width;
    const int64_t at = ((b * kv_heads + g) * length + past + t) * dim;
    rotate(row + (heads + g) * dim, cd + (b * steps + t) * dim, sd + (b * steps + t) * dim, kd + at);
    std::memcpy(vd + at, row + (heads + kv_heads + g) * dim, dim * sizeof(float));
  }
  constexpr int64_t kRows = 64;
  const int64_t blocks = (steps + kRows - 1) / kRows, tasks = batch * heads * blocks;
#pragma omp parallel
  {
    std::vector<float> query(kRows * dim), scores(kRows * keys);
    // Static, as every loop here: GCC compiles schedule(dynamic) to GOMP_loop_nonmonotonic_dynamic_*,
    // which the wheel's libiomp5 lacks; they came from libgomp instead, inside libiomp5's parallel
    // region, and prompts over 256 tokens got wrong, run-to-run different attention on two threads.
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t b = task / (heads * blocks), h = task / blocks % heads, t0 = task % blocks * kRows;
      const int64_t rows = steps - t0 < kRows ? steps - t0 : kRows, g = h / groups;
      const int64_t seen = md ? keys : past + t0 + rows;  // causal: the block's last query sees this many keys
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t t = t0 + r;
        rotate(qd + (b * steps + t) * width + h * dim, cd + (b * steps + t) * dim, sd + (b * steps + t) * dim,
               query.data() + r * dim);
      }
      const float* k_head = kd + (b * kv_heads + g) * length * dim;
      const float* v_head = vd + (b * kv_heads + g) * length * dim;
      cblas_sgemm(kRowMajor, kNoTrans, kTrans, rows, seen, dim, 1.f, query.data(), dim, k_head, dim, 0.f,
                  scores.data(), seen);
      for (int64_t r = 0; r < rows; ++r) {
        float* x = scores.data() + r * seen;
        const int64_t t = t0 + r;
        if (md) {
          const bool* allowed = md + (b * steps + t) * keys;
          for (int64_t j = 0; j < keys; ++j) x[j] = allowed[j] ? x[j] : -1e30f;
          softmax_row(isa, x, x, keys, scale);
        } else {
          const int64_t visible = past + t + 1;
          softmax_row(isa, x, x, visible, scale);
          std::memset(x + visible, 0, (seen - visible) * sizeof(float));
        }
      }
      cblas_sgemm(kRowMajor, kNoTrans, kNoTrans, rows, dim, seen, 1.f, scores.data(), seen, v_head, dim, 0.f,
                  od + (b * steps + t0) * heads * dim + h * dim, heads * dim);
    }
  }
  return {out};
}

std::vector<std::vector<int64_t>> PrefillAttentionShape(const std::vector<int64_t>& qkv_shape,
                                                        const std::vector<int64_t>&, const std::vector<int64_t>&,
                                                        const std::vector<int64_t>&, const std::vector<int64_t>&,
                                                        const std::vector<int64_t>&, int heads, int kv_heads, int,
                                                        int) {
  return {{qkv_shape[0], qkv_shape[1], qkv_shape[2] / (heads + 2 * kv_heads) * heads}};
}
std::vector<paddle::DataType> PrefillAttentionDtype(const paddle::DataType& qkv_dtype, const paddle::DataType&,
                                                    const paddle::DataType&, const paddle::DataType&,
                                                    const paddle::DataType&, const paddle::DataType&) {
  return {qkv_dtype};
}

PD_BUILD_OP(paddlemix_prefill_attention)
    .Inputs({"QKV", "Cos", "Sin", "KCache", "VCache", "Mask"})
    .Outputs({"Out", "KCacheOut", "VCacheOut"})
    .SetInplaceMap({{"KCache", "KCacheOut"}, {"VCache", "VCacheOut"}})
    .Attrs({"heads: int", "kv_heads: int", "past: int", "isa: int"})
    .SetKernelFn(PD_KERNEL(PrefillAttention))
    .SetInferShapeFn(PD_INFER_SHAPE(PrefillAttentionShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(PrefillAttentionDtype));
#endif  // PADDLEMIX_MKL

// One decoding step of rotary grouped-query attention over the KV cache, in place of ~30 eager ops:
// qkv [B, 1, (H + 2 KV) D] (the fused projection's output), cos/sin [B, 1, D]; the caches
// [B, KV, L, D] hold `past` positions. RoPE (rotate-half) on q and k, k and v written at position
// `past` of the caches (in place), then each query head attends over positions 0..past of its KV
// head. A key mask [B, 1, 1, past + 1] (bool, true = attend: padding, a window; empty: none) gives the
// others the score -1e30, as the plain ops do. Out [B, 1, H D]. Threads split the (row, KV head) pairs.
void decode_attention_rows(const float* qd, const float* cd, const float* sd, float* kd, float* vd, const bool* md,
                           int64_t batch, int64_t length, int64_t dim, int64_t heads, int64_t kv_heads, int64_t past,
                           int isa, float* od);

std::vector<paddle::Tensor> DecodeAttention(const paddle::Tensor& qkv, const paddle::Tensor& cos,
                                            const paddle::Tensor& sin, paddle::Tensor& k_cache,
                                            paddle::Tensor& v_cache, const paddle::Tensor& mask, int heads,
                                            int kv_heads, int past, int isa) {
  check_isa(isa);
  const paddle::Tensor* inputs[] = {&qkv, &cos, &sin, &k_cache, &v_cache};
  for (const paddle::Tensor* t : inputs) {
    PD_CHECK(t->is_cpu() && t->dtype() == paddle::DataType::FLOAT32, "decode_attention takes float32 CPU tensors");
  }
  PD_CHECK(k_cache.shape().size() == 4 && k_cache.shape() == v_cache.shape(), "the caches must be [B, KV, L, D]");
  const int64_t batch = k_cache.shape()[0], length = k_cache.shape()[2], dim = k_cache.shape()[3];
  PD_CHECK(kv_heads == k_cache.shape()[1] && heads % kv_heads == 0 && dim % 2 == 0, "heads do not match the cache");
  PD_CHECK(qkv.shape().size() == 3 && qkv.shape()[0] == batch && qkv.shape()[1] == 1 &&
               qkv.shape()[2] == (heads + 2 * kv_heads) * dim, "qkv must be [B, 1, (H + 2 KV) D]");
  PD_CHECK(cos.numel() == batch * dim && sin.numel() == batch * dim, "cos and sin must be [B, 1, D]");
  PD_CHECK(past >= 0 && past < length, "the cache is full");
  PD_CHECK(mask.numel() == 0 || (mask.dtype() == paddle::DataType::BOOL && mask.numel() == batch * (past + 1)),
           "the mask must be bool [B, 1, 1, past + 1], or empty for none");
  auto out = paddle::empty({batch, 1, heads * dim}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  decode_attention_rows(qkv.data<float>(), cos.data<float>(), sin.data<float>(), k_cache.data<float>(),
                        v_cache.data<float>(), data_or_null<bool>(mask), batch, length, dim, heads,
                        kv_heads, past, isa, out.data<float>());
  return {out};
}

// c [m, n] = a [m, k] times b ([n, k] transposed when `b_transposed`, else [k, n]), row-major with
// leading dimensions, on the calling thread: MKL's sgemm where the wheel ships it, else plain loops.
// For the decoding step's small products (a KV head's queries against its keys, then the values):
// as scalar loops, whose dot products are bound by the add latency, they took ~150 us per layer.
void small_gemm(bool b_transposed, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                int64_t ldb, float* c, int64_t ldc) {
#ifdef PADDLEMIX_MKL
  cblas_sgemm(kRowMajor, kNoTrans, b_transposed ? kTrans : kNoTrans, m, n, k, 1.f, a, lda, b, ldb, 0.f, c, ldc);
#else
  for (int64_t i = 0; i < m; ++i) {
    float* row = c + i * ldc;
    for (int64_t j = 0; j < n; ++j) row[j] = 0.f;
    for (int64_t t = 0; t < k; ++t) {
      const float x = a[i * lda + t];
      if (b_transposed) {
        for (int64_t j = 0; j < n; ++j) row[j] += x * b[j * ldb + t];
      } else {
        for (int64_t j = 0; j < n; ++j) row[j] += x * b[t * ldb + j];
      }
    }
  }
#endif
}

// The attention of decode_attention on raw rows: qkv [B, (H + 2 KV) D], cos/sin [B, D], caches
// [B, KV, L, D], mask [B, past + 1] or null; out [B, H D].
void decode_attention_rows(const float* qd, const float* cd, const float* sd, float* kd, float* vd, const bool* md,
                           int64_t batch, int64_t length, int64_t dim, int64_t heads, int64_t kv_heads, int64_t past,
                           int isa, float* od) {
  const int64_t groups = heads / kv_heads, keys = past + 1;
  const float scale = 1.f / std::sqrt(static_cast<float>(dim));
  auto rotate = [dim](const float* x, const float* c, const float* s, float* y) { rotate_half(x, c, s, y, dim); };
#pragma omp parallel
  {
    std::vector<float> queries(groups * dim), scores(groups * keys);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < batch * kv_heads; ++task) {
      const int64_t b = task / kv_heads, g = task % kv_heads;
      const float *row = qd + b * (heads + 2 * kv_heads) * dim, *c = cd + b * dim, *s = sd + b * dim;
      float* k_head = kd + (b * kv_heads + g) * length * dim;
      float* v_head = vd + (b * kv_heads + g) * length * dim;
      rotate(row + (heads + g) * dim, c, s, k_head + past * dim);
      std::memcpy(v_head + past * dim, row + (heads + kv_heads + g) * dim, dim * sizeof(float));
      for (int64_t i = 0; i < groups; ++i) rotate(row + (g * groups + i) * dim, c, s, queries.data() + i * dim);
      small_gemm(true, groups, keys, dim, queries.data(), dim, k_head, dim, scores.data(), keys);
      for (int64_t i = 0; i < groups; ++i) {
        float* x = scores.data() + i * keys;
        if (md) {
          for (int64_t j = 0; j < keys; ++j) x[j] = md[b * keys + j] ? x[j] : -1e30f;
        }
        softmax_row(isa, x, x, keys, scale);
      }
      // The group's query heads are neighbours in the output row.
      small_gemm(false, groups, dim, keys, scores.data(), keys, v_head, dim, od + b * heads * dim + g * groups * dim,
                 dim);
    }
  }
}

std::vector<std::vector<int64_t>> DecodeAttentionShape(const std::vector<int64_t>& qkv_shape,
                                                       const std::vector<int64_t>&, const std::vector<int64_t>&,
                                                       const std::vector<int64_t>&, const std::vector<int64_t>&,
                                                       const std::vector<int64_t>&, int heads, int kv_heads, int,
                                                       int) {
  const int64_t dim = qkv_shape[2] / (heads + 2 * kv_heads);
  return {{qkv_shape[0], 1, heads * dim}};
}
std::vector<paddle::DataType> DecodeAttentionDtype(const paddle::DataType& qkv_dtype, const paddle::DataType&,
                                                   const paddle::DataType&, const paddle::DataType&,
                                                   const paddle::DataType&, const paddle::DataType&) {
  return {qkv_dtype};
}

PD_BUILD_OP(paddlemix_decode_attention)
    .Inputs({"QKV", "Cos", "Sin", "KCache", "VCache", "Mask"})
    .Outputs({"Out", "KCacheOut", "VCacheOut"})
    .SetInplaceMap({{"KCache", "KCacheOut"}, {"VCache", "VCacheOut"}})
    .Attrs({"heads: int", "kv_heads: int", "past: int", "isa: int"})
    .SetKernelFn(PD_KERNEL(DecodeAttention))
    .SetInferShapeFn(PD_INFER_SHAPE(DecodeAttentionShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(DecodeAttentionDtype));

// RMSNorm over the last axis of x [..., C] with a float32 weight [C]; with a residual, of x + residual,
// which is returned too (the decoder layer's "add, then normalise" in one pass).
std::vector<paddle::Tensor> rms_norm_rows(const paddle::Tensor& x, const paddle::Tensor* residual,
                                          const paddle::Tensor& w, float eps, int isa) {
  check_isa(isa);
  auto out = float32_like(x, "rms_norm");
  const int64_t n = x.shape().back(), rows = n ? x.numel() / n : 0;
  PD_CHECK(w.dtype() == paddle::DataType::FLOAT32 && w.numel() == n, "the weight must be float32 [C]");
  PD_CHECK(!residual || (residual->dtype() == paddle::DataType::FLOAT32 && residual->shape() == x.shape()),
           "the residual must be float32 and shaped like x");
  paddle::Tensor sum = residual ? float32_like(x, "rms_norm") : paddle::Tensor();
  const float *xd = x.data<float>(), *rd = residual ? residual->data<float>() : nullptr, *wd = w.data<float>();
  float *od = out.data<float>(), *sd = residual ? sum.data<float>() : nullptr;
#pragma omp parallel for schedule(static) if (rows > 16)
  for (int64_t r = 0; r < rows; ++r) {
    rms_norm_row(isa, xd + r * n, rd ? rd + r * n : nullptr, wd, eps, od + r * n, sd ? sd + r * n : nullptr, n);
  }
  if (residual) return {out, sum};
  return {out};
}

std::vector<paddle::Tensor> RmsNorm(const paddle::Tensor& x, const paddle::Tensor& w, float eps, int isa) {
  return rms_norm_rows(x, nullptr, w, eps, isa);
}
std::vector<paddle::Tensor> AddRmsNorm(const paddle::Tensor& x, const paddle::Tensor& residual, const paddle::Tensor& w,
                                       float eps, int isa) {
  return rms_norm_rows(x, &residual, w, eps, isa);
}
std::vector<std::vector<int64_t>> RmsNormShape(const std::vector<int64_t>& x_shape, const std::vector<int64_t>&) {
  return {x_shape};
}
std::vector<std::vector<int64_t>> AddRmsNormShape(const std::vector<int64_t>& x_shape, const std::vector<int64_t>&,
                                                  const std::vector<int64_t>&) {
  return {x_shape, x_shape};
}
std::vector<paddle::DataType> RmsNormDtype(const paddle::DataType& x_dtype, const paddle::DataType&) {
  return {x_dtype};
}
std::vector<paddle::DataType> AddRmsNormDtype(const paddle::DataType& x_dtype, const paddle::DataType&,
                                              const paddle::DataType&) {
  return {x_dtype, x_dtype};
}

PD_BUILD_OP(paddlemix_rms_norm)
    .Inputs({"X", "W"})
    .Outputs({"Out"})
    .Attrs({"eps: float", "isa: int"})
    .SetKernelFn(PD_KERNEL(RmsNorm))
    .SetInferShapeFn(PD_INFER_SHAPE(RmsNormShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(RmsNormDtype));

PD_BUILD_OP(paddlemix_add_rms_norm)
    .Inputs({"X", "Residual", "W"})
    .Outputs({"Out", "Sum"})
    .Attrs({"eps: float", "isa: int"})
    .SetKernelFn(PD_KERNEL(AddRmsNorm))
    .SetInferShapeFn(PD_INFER_SHAPE(AddRmsNormShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(AddRmsNormDtype));

// One decoding step of a whole decoder layer for up to 16 rows (a new token each), in place of ~11
// eager ops and their per-call overhead:
//   h = x + o(attention(qkv(rms_norm_1(x))));  out = h + down(swiglu(gate_up(rms_norm_2(h)))),
// the attention as in decode_attention (RoPE, the cache write in place, an optional key mask
// [B, 1, 1, past + 1]; empty: none). `params`: the two norm weights, then for q/k/v, o, gate/up and
// down each a bf16 or int8 [out, in] weight, its int8 scale and its bias (empty tensors: none).
std::vector<paddle::Tensor> DecodeLayer(const paddle::Tensor& x, const paddle::Tensor& cos, const paddle::Tensor& sin,
                                        paddle::Tensor& k_cache, paddle::Tensor& v_cache, const paddle::Tensor& mask,
                                        const std::vector<paddle::Tensor>& params, float eps, int heads, int kv_heads,
                                        int past, int isa) {
  check_isa(isa);
  PD_CHECK(params.size() == 14, "decode_layer takes 2 norm weights and 4 x (weight, scale, bias)");
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32 && x.shape().size() == 3 && x.shape()[1] == 1,
           "x must be float32 [B, 1, C]");
  PD_CHECK(k_cache.dtype() == paddle::DataType::FLOAT32 && k_cache.shape().size() == 4 &&
               k_cache.shape() == v_cache.shape(), "the caches must be float32 [B, KV, L, D]");
  const int64_t batch = x.shape()[0], hidden = x.shape()[2], length = k_cache.shape()[2], dim = k_cache.shape()[3];
  const paddle::Tensor &qkv_w = params[2], &o_w = params[5], &gate_up_w = params[8], &down_w = params[11];
  const int64_t qkv_n = (heads + 2 * kv_heads) * dim, inner = gate_up_w.shape()[0] / 2;
  PD_CHECK(batch == k_cache.shape()[0] && kv_heads == k_cache.shape()[1] && past >= 0 && past < length,
           "the cache does not match x, or it is full");
  PD_CHECK(qkv_w.shape() == std::vector<int64_t>({qkv_n, hidden}) &&
               o_w.shape() == std::vector<int64_t>({hidden, heads * dim}) && gate_up_w.shape()[1] == hidden &&
               down_w.shape() == std::vector<int64_t>({hidden, inner}),
           "the weights do not match the layer's shapes");
  PD_CHECK(cos.numel() == batch * dim && sin.numel() == batch * dim, "cos and sin must be [B, 1, D]");
  PD_CHECK(mask.numel() == 0 || (mask.dtype() == paddle::DataType::BOOL && mask.numel() == batch * (past + 1)),
           "the mask must be bool [B, 1, 1, past + 1], or empty");
  for (int i = 0; i < 2; ++i) {
    PD_CHECK(params[i].dtype() == paddle::DataType::FLOAT32 && params[i].numel() == hidden,
             "the norm weights must be float32 [C]");
  }
  for (int i = 2; i < 14; i += 3) {
    const int64_t n_dim = params[i].shape()[0];
    PD_CHECK(params[i].dtype() != paddle::DataType::INT8 || params[i + 1].numel() == n_dim,
             "int8 weights need a scale per output");
    PD_CHECK(params[i + 2].numel() == 0 || params[i + 2].numel() == n_dim, "a bias must have one value per output");
  }
  auto out = paddle::empty(x.shape(), paddle::DataType::FLOAT32, paddle::CPUPlace());
  std::vector<float> normed(batch * hidden), qkv(batch * qkv_n), attended(batch * heads * dim),
      residual(batch * hidden), gate_up(batch * 2 * inner), act(batch * inner), projected(batch * hidden);
  const float *xd = x.data<float>(), *norm1 = params[0].data<float>(), *norm2 = params[1].data<float>();
  for (int64_t b = 0; b < batch; ++b)
    rms_norm_row(isa, xd + b * hidden, nullptr, norm1, eps, normed.data() + b * hidden, nullptr, hidden);
  project(normed.data(), batch, qkv_w, data_or_null(params[3]), data_or_null(params[4]), qkv.data(), isa);
  decode_attention_rows(qkv.data(), cos.data<float>(), sin.data<float>(), k_cache.data<float>(), v_cache.data<float>(),
                        data_or_null<bool>(mask), batch, length, dim, heads, kv_heads, past, isa,
                        attended.data());
  project(attended.data(), batch, o_w, data_or_null(params[6]), data_or_null(params[7]), projected.data(),
          isa);
  for (int64_t b = 0; b < batch; ++b)  // h = attention + x, then its norm
    rms_norm_row(isa, projected.data() + b * hidden, xd + b * hidden, norm2, eps, normed.data() + b * hidden,
                 residual.data() + b * hidden, hidden);
  project(normed.data(), batch, gate_up_w, data_or_null(params[9]), data_or_null(params[10]), gate_up.data(),
          isa);
  for (int64_t b = 0; b < batch; ++b)
    swiglu_row(isa, gate_up.data() + b * 2 * inner, gate_up.data() + b * 2 * inner + inner, act.data() + b * inner,
               inner);
  project(act.data(), batch, down_w, data_or_null(params[12]), data_or_null(params[13]), projected.data(),
          isa);
  float* od = out.data<float>();
  for (int64_t i = 0; i < batch * hidden; ++i) od[i] = residual[i] + projected[i];
  return {out};
}

std::vector<std::vector<int64_t>> DecodeLayerShape(const std::vector<int64_t>& x_shape, const std::vector<int64_t>&,
                                                   const std::vector<int64_t>&, const std::vector<int64_t>&,
                                                   const std::vector<int64_t>&, const std::vector<int64_t>&,
                                                   const std::vector<std::vector<int64_t>>&, float, int, int, int,
                                                   int) {
  return {x_shape};
}
std::vector<paddle::DataType> DecodeLayerDtype(const paddle::DataType& x_dtype, const paddle::DataType&,
                                               const paddle::DataType&, const paddle::DataType&,
                                               const paddle::DataType&, const paddle::DataType&,
                                               const std::vector<paddle::DataType>&) {
  return {x_dtype};
}

PD_BUILD_OP(paddlemix_decode_layer)
    .Inputs({"X", "Cos", "Sin", "KCache", "VCache", "Mask", paddle::Vec("Params")})
    .Outputs({"Out", "KCacheOut", "VCacheOut"})
    .SetInplaceMap({{"KCache", "KCacheOut"}, {"VCache", "VCacheOut"}})
    .Attrs({"eps: float", "heads: int", "kv_heads: int", "past: int", "isa: int"})
    .SetKernelFn(PD_KERNEL(DecodeLayer))
    .SetInferShapeFn(PD_INFER_SHAPE(DecodeLayerShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(DecodeLayerDtype));
