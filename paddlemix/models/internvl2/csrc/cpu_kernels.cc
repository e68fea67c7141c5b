// CPU kernels for decoding: a product of a few float32 rows with a bfloat16 or int8 weight kept in
// the checkpoint's [out, in] layout. Decoding is bound by the bytes of weight read per token, so
// each weight row is read once from memory for all rows of x and widened in registers (bf16 -> fp32
// is a 16-bit shift; int8 is scaled per output row after the dot product). Threads split the output
// features. The AVX-512 and AVX2+FMA bodies are compiled with function target attributes, so this
// file builds with the baseline flags; Python picks the body from the CPU's features (`isa`).
#include <cstdint>
#include <cstring>
#include <vector>

#include "paddle/extension.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PADDLEMIX_X86 1
#endif

namespace {

enum Isa { kPlain = 0, kAvx2 = 1, kAvx512 = 2 };
enum WeightKind { kBf16 = 0, kInt8 = 1 };

inline float widen(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, sizeof(value));
  return value;
}
inline float widen(int8_t value) { return static_cast<float>(value); }

// out[r, n] for rows [0, rows) and outputs [n_begin, n_end), one scalar at a time.
template <typename W>
void plain_block(const float* x, int64_t rows, int64_t k_dim, const W* w, const float* scale, float* out,
                 int64_t n_dim, int64_t n_begin, int64_t n_end) {
  for (int64_t n = n_begin; n < n_end; ++n) {
    const W* w_row = w + n * k_dim;
    for (int64_t r = 0; r < rows; ++r) {
      const float* x_row = x + r * k_dim;
      float sum = 0.f;
      for (int64_t k = 0; k < k_dim; ++k) sum += widen(w_row[k]) * x_row[k];
      out[r * n_dim + n] = scale ? sum * scale[n] : sum;
    }
  }
}

#ifdef PADDLEMIX_X86
// ---- AVX-512: 16 floats per register, up to 8 rows with two accumulators each ------------------
__attribute__((target("avx512f"))) inline __m512 load16(const uint16_t* p) {
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}
__attribute__((target("avx512f"))) inline __m512 load16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

template <int ROWS, typename W>
__attribute__((target("avx512f"))) void avx512_rows(const float* x, int64_t k_dim, const W* w_row, float* sums) {
  __m512 acc0[ROWS], acc1[ROWS];
  for (int r = 0; r < ROWS; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= k_dim; k += 32) {
    const __m512 w0 = load16(w_row + k), w1 = load16(w_row + k + 16);
    for (int r = 0; r < ROWS; ++r) {
      acc0[r] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + r * k_dim + k), acc0[r]);
      acc1[r] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + r * k_dim + k + 16), acc1[r]);
    }
  }
  for (; k + 16 <= k_dim; k += 16) {
    const __m512 w0 = load16(w_row + k);
    for (int r = 0; r < ROWS; ++r) acc0[r] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + r * k_dim + k), acc0[r]);
  }
  for (int r = 0; r < ROWS; ++r) {
    float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0[r], acc1[r]));
    for (int64_t t = k; t < k_dim; ++t) sum += widen(w_row[t]) * x[r * k_dim + t];
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
__attribute__((target("avx2,fma"))) void avx2_rows(const float* x, int64_t k_dim, const W* w_row, float* sums) {
  __m256 acc0[ROWS], acc1[ROWS];
  for (int r = 0; r < ROWS; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= k_dim; k += 16) {
    const __m256 w0 = load8(w_row + k), w1 = load8(w_row + k + 8);
    for (int r = 0; r < ROWS; ++r) {
      acc0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + r * k_dim + k), acc0[r]);
      acc1[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + r * k_dim + k + 8), acc1[r]);
    }
  }
  for (; k + 8 <= k_dim; k += 8) {
    const __m256 w0 = load8(w_row + k);
    for (int r = 0; r < ROWS; ++r) acc0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + r * k_dim + k), acc0[r]);
  }
  for (int r = 0; r < ROWS; ++r) {
    float sum = reduce8(_mm256_add_ps(acc0[r], acc1[r]));
    for (int64_t t = k; t < k_dim; ++t) sum += widen(w_row[t]) * x[r * k_dim + t];
    sums[r] = sum;
  }
}

template <typename W>
using RowsFn = void (*)(const float*, int64_t, const W*, float*);

// The rows of x in blocks of `block` (the last one smaller), `bodies[count]` computing `count` rows;
// each weight row is read from memory once and stays in L1 for the following blocks.
template <typename W>
void simd_block(const RowsFn<W>* bodies, int block, const float* x, int64_t rows, int64_t k_dim, const W* w,
                const float* scale, float* out, int64_t n_dim, int64_t n_begin, int64_t n_end) {
  float sums[8];
  for (int64_t n = n_begin; n < n_end; ++n) {
    const W* w_row = w + n * k_dim;
    for (int64_t r0 = 0; r0 < rows; r0 += block) {
      const int count = static_cast<int>(rows - r0 < block ? rows - r0 : block);
      bodies[count](x + r0 * k_dim, k_dim, w_row, sums);
      for (int r = 0; r < count; ++r) out[(r0 + r) * n_dim + n] = scale ? sums[r] * scale[n] : sums[r];
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
void product(const float* x, int64_t rows, int64_t k_dim, const W* w, const float* scale, float* out, int64_t n_dim,
             int isa) {
  constexpr int64_t kChunk = 16;  // output features per scheduling unit
  const int64_t chunks = (n_dim + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t n_begin = c * kChunk, n_end = n_begin + kChunk < n_dim ? n_begin + kChunk : n_dim;
#ifdef PADDLEMIX_X86
    if (isa == kAvx512) {
      simd_block<W>(kAvx512Bodies<W>, 8, x, rows, k_dim, w, scale, out, n_dim, n_begin, n_end);
      continue;
    }
    if (isa == kAvx2) {
      simd_block<W>(kAvx2Bodies<W>, 4, x, rows, k_dim, w, scale, out, n_dim, n_begin, n_end);
      continue;
    }
#endif
    plain_block(x, rows, k_dim, w, scale, out, n_dim, n_begin, n_end);
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

paddle::Tensor run(const paddle::Tensor& x, const paddle::Tensor& w, const float* scale, int kind, int isa) {
  check_isa(isa);
  PD_CHECK(x.is_cpu() && w.is_cpu(), "lowp_linear runs on CPU tensors");
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32, "x must be float32");
  PD_CHECK(w.shape().size() == 2 && x.shape().back() == w.shape()[1], "x [..., K] needs a weight [N, K]");
  const int64_t k_dim = w.shape()[1], n_dim = w.shape()[0], rows = k_dim ? x.numel() / k_dim : 0;
  auto out = paddle::empty(out_shape(x.shape(), w.shape()), paddle::DataType::FLOAT32, paddle::CPUPlace());
  if (kind == kBf16) {
    PD_CHECK(w.dtype() == paddle::DataType::BFLOAT16, "the weight must be bfloat16");
    product(x.data<float>(), rows, k_dim, reinterpret_cast<const uint16_t*>(w.data<paddle::bfloat16>()), scale,
            out.data<float>(), n_dim, isa);
  } else {
    PD_CHECK(w.dtype() == paddle::DataType::INT8, "the weight must be int8");
    product(x.data<float>(), rows, k_dim, w.data<int8_t>(), scale, out.data<float>(), n_dim, isa);
  }
  return out;
}

}  // namespace

std::vector<paddle::Tensor> Bf16Linear(const paddle::Tensor& x, const paddle::Tensor& w, int isa) {
  return {run(x, w, nullptr, kBf16, isa)};
}

std::vector<paddle::Tensor> Int8Linear(const paddle::Tensor& x, const paddle::Tensor& w, const paddle::Tensor& scale,
                                       int isa) {
  PD_CHECK(scale.dtype() == paddle::DataType::FLOAT32 && scale.numel() == w.shape()[0],
           "scale must be float32 with one value per output feature");
  return {run(x, w, scale.data<float>(), kInt8, isa)};
}

std::vector<std::vector<int64_t>> LinearShape(const std::vector<int64_t>& x_shape,
                                              const std::vector<int64_t>& w_shape) {
  return {out_shape(x_shape, w_shape)};
}
std::vector<std::vector<int64_t>> ScaledLinearShape(const std::vector<int64_t>& x_shape,
                                                    const std::vector<int64_t>& w_shape,
                                                    const std::vector<int64_t>&) {
  return {out_shape(x_shape, w_shape)};
}
std::vector<paddle::DataType> Float32Out(const paddle::DataType&, const paddle::DataType&) {
  return {paddle::DataType::FLOAT32};
}
std::vector<paddle::DataType> ScaledFloat32Out(const paddle::DataType&, const paddle::DataType&,
                                               const paddle::DataType&) {
  return {paddle::DataType::FLOAT32};
}

PD_BUILD_OP(paddlemix_bf16_linear)
    .Inputs({"X", "W"})
    .Outputs({"Out"})
    .Attrs({"isa: int"})
    .SetKernelFn(PD_KERNEL(Bf16Linear))
    .SetInferShapeFn(PD_INFER_SHAPE(LinearShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(Float32Out));

PD_BUILD_OP(paddlemix_int8_linear)
    .Inputs({"X", "W", "Scale"})
    .Outputs({"Out"})
    .Attrs({"isa: int"})
    .SetKernelFn(PD_KERNEL(Int8Linear))
    .SetInferShapeFn(PD_INFER_SHAPE(ScaledLinearShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(ScaledFloat32Out));
