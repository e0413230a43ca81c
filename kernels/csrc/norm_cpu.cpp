// RMSNorm of bf16 rows on the CPU in one call, as offload/model/norm.py computes it with torch:
//   t = bf16(x * rsqrt(mean(x^2) + eps))   (statistics in float32)
//   y = bf16(w * t)                          (a bf16 times bf16 product, rounded once)
// A decode step runs ~45 of these on single rows, where torch's five ops take ~100 us; this takes a few.
// Called through ctypes; built and bound by kernels/cpu_norm.py.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "bf16.h"


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
