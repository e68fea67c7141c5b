// For the tests only (tests/test_native_kernels.py), on CPUs without AVX-512: cpu_kernels.cc built
// with -DPADDLEMIX_EMULATED_AVX512 includes this, and the AVX-512 bodies' own code runs on AVX2.
// SIMDe (Debian's libsimde-dev) gives portable versions of the _mm512_ intrinsics under their usual
// names. The five it lacks are written out here, lane by lane (Debian 12's SIMDe 0.7.4 lacks all five;
// 0.8.2 still lacks _mm512_cvtepi8_epi32 and _mm512_reduce_add_ps); each steps aside where SIMDe has it.
#ifndef PADDLEMIX_EMULATED_AVX512_H_
#define PADDLEMIX_EMULATED_AVX512_H_

#include <cstdint>
#include <cstring>

// The build gives -mavx2 -mfma, so that SIMDe's 256-bit types are the compiler's own: the AVX-512
// bodies feed native ones to its 512-bit functions (a _mm256_loadu_si256 to _mm512_cvtepu16_epi32).
#if !defined(__AVX2__) || !defined(__FMA__)
#error "the emulated AVX-512 build needs -mavx2 -mfma"
#endif
#define SIMDE_X86_AVX512F_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>

// The 16 lanes of a register as an array of T, and back.
template <typename T, typename V>
inline void emulated_lanes(const V& v, T (&lanes)[16]) {
  static_assert(sizeof(v) == sizeof(lanes), "a register of 16 lanes");
  std::memcpy(lanes, &v, sizeof(lanes));
}
template <typename V, typename T>
inline V emulated_register(const T (&lanes)[16]) {
  V v;
  static_assert(sizeof(v) == sizeof(lanes), "a register of 16 lanes");
  std::memcpy(&v, lanes, sizeof(v));
  return v;
}

// Each lane of `in` (type From) converted to type To, as a register of V.
template <typename V, typename To, typename From, typename In>
inline V emulated_convert(const In& in) {
  From from[16];
  To to[16];
  emulated_lanes(in, from);
  for (int i = 0; i < 16; ++i) to[i] = static_cast<To>(from[i]);
  return emulated_register<V>(to);
}

#ifndef _mm512_cvtepi32_ps
#define _mm512_cvtepi32_ps(a) emulated_convert<__m512, float, int32_t>(a)
#endif
#ifndef _mm512_cvtepu16_epi32
#define _mm512_cvtepu16_epi32(a) emulated_convert<__m512i, int32_t, uint16_t>(a)
#endif
#ifndef _mm512_cvtepi8_epi32
#define _mm512_cvtepi8_epi32(a) emulated_convert<__m512i, int32_t, int8_t>(a)
#endif

// The reductions combine halves of the register, as GCC's own sequence of instructions does.
template <typename Combine>
inline float emulated_reduce(__m512 a, Combine combine) {
  float lanes[16];
  emulated_lanes(a, lanes);
  for (int width = 8; width >= 1; width /= 2) {
    for (int i = 0; i < width; ++i) lanes[i] = combine(lanes[i], lanes[i + width]);
  }
  return lanes[0];
}
#ifndef _mm512_reduce_add_ps
#define _mm512_reduce_add_ps(a) emulated_reduce(a, [](float x, float y) { return x + y; })
#endif
#ifndef _mm512_reduce_max_ps
#define _mm512_reduce_max_ps(a) emulated_reduce(a, [](float x, float y) { return y > x ? y : x; })
#endif

#endif  // PADDLEMIX_EMULATED_AVX512_H_
