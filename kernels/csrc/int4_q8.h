// One decode token through a layer's INT4 experts (compressed-tensors pack-quantized, group 32, bf16 scales, the
// K2.5 release's layout, read in place) with int8 activations and integer dot products, as the ggml types are
// computed here (included by ggml_cpu.cpp; its activations, dot products and thread conventions).
//
// A row's 32 weights of group g are the 16 bytes at 16 g of its packed words: byte i holds columns 2i (low nibble)
// and 2i + 1 (high nibble), nibble n meaning n - 8. Unpacked like Q4_0's block (low nibbles, then high ones) they
// come out as [even columns, odd columns]; so the token's int8 codes are permuted once per call the same way and the
// row never has to be shuffled. w = (n - 8) * scale_g, scale_g the row's bf16 at g.
//
//   out [D] = sum_e wts[e] * down_e(int8(silu(gate_e int8(x)) * up_e int8(x)))

namespace {

struct Int4Mat {  // [out, in]: packed int32 [out, in / 8], scale bf16 [out, in / 32]
  const uint8_t* packed;
  const uint16_t* scale;
};

// the int8 codes of a quantized token, each block of 32 reordered to [even columns, odd columns]
void evens_odds(const int8_t* q, int64_t in, int8_t* out) {
  for (int64_t b = 0; b < in / 32; ++b) {
    const int8_t* s = q + 32 * b;
    int8_t* d = out + 32 * b;
    for (int i = 0; i < 16; ++i) {
      d[i] = s[2 * i];
      d[16 + i] = s[2 * i + 1];
    }
  }
}

// two groups per step into two accumulators, one prefetch per 64-byte line (as ggml_cpu.cpp's Q4_0 row)
KI float int4_row(const uint8_t* packed, const uint16_t* scale, const Act& a, int64_t nb) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  float c0 = 0.0f, c1 = 0.0f;
  int64_t g = 0;
  for (; g + 2 <= nb; g += 2) {
    const uint8_t* blk = packed + 16 * g;
    if (g % 4 == 0) _mm_prefetch(reinterpret_cast<const char*>(blk + kPrefetch), _MM_HINT_T0);
    acc0 = nibbles_block(blk, bf16_to_f(scale[g]), a, g, acc0, c0);
    acc1 = nibbles_block(blk + 16, bf16_to_f(scale[g + 1]), a, g + 1, acc1, c1);
  }
  if (g < nb) acc0 = nibbles_block(packed + 16 * g, bf16_to_f(scale[g]), a, g, acc0, c0);
  return hsum(_mm256_add_ps(acc0, acc1)) - 8.0f * (c0 + c1);
}

// rows [r0, r0 + n) of m (in columns) against one permuted token; y[row]
KI void int4_tile(const Int4Mat& m, int64_t in, int64_t r0, int n, const Act& a, float* y) {
  for (int r = 0; r < n; ++r) {
    const int64_t row = r0 + r;
    y[row] = int4_row(m.packed + row * (in / 2), m.scale + row * (in / 32), a, in / 32);
  }
}

}  // namespace

extern "C" {

// x [D] float32, E experts: mats[3e + 0..2] = gate [I, D], up [I, D], down [D, I]; wts [E] -> out [D].
// Returns 0, 1 (no memory), 2 (bad sizes).
int kimi_int4_moe_decode(const float* x, int64_t D, int64_t I, int64_t E, const int64_t* ptrs, const float* wts,
                         float* out, int n_threads) {
  if (D <= 0 || I <= 0 || D % 32 || I % 32 || E < 0) return 2;
  ActBuf ax, ah;
  int8_t* xp = static_cast<int8_t*>(std::malloc(D));
  int8_t* hp = static_cast<int8_t*>(std::malloc(std::max<int64_t>(E * I, 1)));
  float* gu = static_cast<float*>(std::malloc(std::max<int64_t>(E * 2 * I, 1) * sizeof(float)));  // [E, 2, I]
  float* yd = static_cast<float*>(std::malloc(std::max<int64_t>(E * D, 1) * sizeof(float)));      // [E, D]
  if (!ax.alloc(1, D, 32) || !ah.alloc(std::max<int64_t>(E, 1), I, 32) || !xp || !hp || !gu || !yd) {
    std::free(xp);
    std::free(hp);
    std::free(gu);
    std::free(yd);
    return 1;
  }
  auto mat = [&](int64_t e, int p) {
    return Int4Mat{reinterpret_cast<const uint8_t*>(ptrs[6 * e + 2 * p]),
                   reinterpret_cast<const uint16_t*>(ptrs[6 * e + 2 * p + 1])};
  };
  const int64_t tiles_i = (I + kR - 1) / kR, tiles_d = (D + kR - 1) / kR;
#pragma omp parallel num_threads(n_threads)
  {
#pragma omp single
    {
      ax.set.quantize(0, x);
      evens_odds(ax.set.q, D, xp);
    }
    const Act a{xp, ax.set.d8, ax.set.s16, ax.set.bs, 32};
#pragma omp for schedule(static)  // contiguous shares: each thread streams its experts' rows
    for (int64_t k = 0; k < E * 2 * tiles_i; ++k) {
      const int64_t e = k / (2 * tiles_i), p = (k / tiles_i) % 2, r0 = (k % tiles_i) * kR;
      int4_tile(mat(e, static_cast<int>(p)), D, r0, static_cast<int>(std::min<int64_t>(kR, I - r0)), a,
                gu + e * 2 * I + p * I);
    }
#pragma omp for schedule(static)
    for (int64_t e = 0; e < E; ++e) {
      float* g = gu + e * 2 * I;
      for (int64_t i = 0; i < I; ++i) g[i] = silu(g[i]) * g[I + i];
      ah.set.quantize(e, g);
      evens_odds(ah.set.q + e * I, I, hp + e * I);
    }
#pragma omp for schedule(static)
    for (int64_t k = 0; k < E * tiles_d; ++k) {
      const int64_t e = k / tiles_d, r0 = (k % tiles_d) * kR;
      const Act h{hp + e * I, ah.set.d8 + e * (I / 32) * 8, ah.set.s16 + e * (I / 16), ah.set.bs + e * (I / 16), 32};
      int4_tile(mat(e, 2), I, r0, static_cast<int>(std::min<int64_t>(kR, D - r0)), h, yd + e * D);
    }
    // the weighted sum: each thread owns a range of columns, experts in order
    const int nt = omp_get_num_threads(), me = omp_get_thread_num();
    const int64_t c0 = D * me / nt, c1 = D * (me + 1) / nt;
    std::fill(out + c0, out + c1, 0.0f);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t c = c0; c < c1; ++c) out[c] += wts[e] * yd[e * D + c];
  }
  std::free(xp);
  std::free(hp);
  std::free(gu);
  std::free(yd);
  return 0;
}

}  // extern "C"
