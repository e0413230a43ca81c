// RMSNorm of bf16 rows on the CPU in one call, as offload/model/norm.py computes it with torch (the arithmetic is
// norm_row.h's). A decode step runs ~45 of these on single rows, where torch's five ops take ~100 us; this takes a
// few. Called through ctypes; built and bound by kernels/cpu_norm.py.
#include <cstdint>

#include "norm_row.h"

extern "C" {

// y [rows, n] = rms_norm(x [rows, n]) * w [n], all bf16 (uint16 bits), rows contiguous. Returns 0, or 2 for n < 1.
int kimi_rms_norm_bf16(const uint16_t* x, int64_t rows, int64_t n, const uint16_t* w, float eps, uint16_t* y) {
  if (n < 1) return 2;
  for (int64_t r = 0; r < rows; ++r) rms_norm_bf16_row(x + r * n, n, w, eps, y + r * n);
  return 0;
}

}  // extern "C"
