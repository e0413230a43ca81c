// RMSNorm of bf16 rows on the CPU in one call, as offload/model/norm.py computes it with torch:
//   t = bf16(x * rsqrt(mean(x^2) + eps))   (statistics in float32)
//   y = bf16(w * t)                          (a bf16 times bf16 product, rounded once)
// A decode step runs ~45 of these on single rows, where torch's five ops take ~100 us; this takes a few.
// Called through ctypes; built and bound by kernels/cpu_norm.py.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

inline float bf16_to_f(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f_to_bf16(float f) {  // round to nearest even; NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline __m256 load_bf16x8(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

}  // namespace

extern "C" {

// y [rows, n] = rms_norm(x [rows, n]) * w [n], all bf16 (uint16 bits), rows contiguous. Returns 0, or 2 for n < 1.
int kimi_rms_norm_bf16(const uint16_t* x, int64_t rows, int64_t n, const uint16_t* w, float eps, uint16_t* y) {
  if (n < 1) return 2;
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* xr = x + r * n;
    uint16_t* yr = y + r * n;
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      const __m256 v = load_bf16x8(xr + i);
      acc = _mm256_fmadd_ps(v, v, acc);
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, acc);
    float ss = 0.0f;
    for (float l : lanes) ss += l;
    for (; i < n; ++i) ss += bf16_to_f(xr[i]) * bf16_to_f(xr[i]);
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
    for (int64_t j = 0; j < n; ++j) {
      const float t = bf16_to_f(f_to_bf16(bf16_to_f(xr[j]) * inv));
      yr[j] = f_to_bf16(bf16_to_f(w[j]) * t);
    }
  }
  return 0;
}

}  // extern "C"
