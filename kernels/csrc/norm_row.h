// RMSNorm of one bf16 row, as offload/model/norm.py computes it with torch (norm_cpu.cpp's rows, and the decode
// layer's two norms in layer_cpu.h):
//   t = bf16(x * rsqrt(mean(x^2) + eps))   (statistics in float32)
//   y = bf16(w * t)                          (a bf16 times bf16 product, rounded once)
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "bf16.h"

namespace {

inline void rms_norm_bf16_row(const uint16_t* xr, int64_t n, const uint16_t* w, float eps, uint16_t* yr) {
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

}  // namespace
