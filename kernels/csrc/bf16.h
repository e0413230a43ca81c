// bf16 <-> float32 for the CPU kernels (norm_cpu.cpp, and ggml_cpu.cpp's attention and INT4 scales): a bf16 is the
// top half of a float32; the narrowing rounds to nearest even, as torch does, and keeps a NaN a NaN.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace {

inline float bf16_to_f(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline __m256 load_bf16x8(const uint16_t* p) {  // 8 bf16 -> 8 float32
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

}  // namespace
