// INT4 pack-quantized (compressed-tensors, group 32, bf16 scales) matmul and expert FFN on the CPU: AVX2 + FMA,
// OpenMP over output rows. Reads the checkpoint's layout in place: weight_packed int32 [out, in/8] (column c in
// word c/8 at bits 4*(c%8), nibble n encodes q = n - 8), weight_scale bf16 [out, in/32].
//
// The trick that makes unpacking cheap: one 256-bit load holds 8 words = 64 columns, lane j = columns 8j..8j+7, and
// `w & (0xF << 4k)` is the integer n * 2^(4k) of column 8j+k in every lane, exact as a float. So the activations are
// permuted once per call (x'[k][j] = x[8j+k]) and pre-scaled by 2^-4k (exact; only |x| < 2^-102 would go subnormal),
// and a column's nibble never has to be shifted into place. Lanes 0-3 are one group of 32 columns, lanes 4-7 the next.
// - 1-2 tokens (decode): per 8 weights one AND, one int->float convert, one FMA per token; the -8 offset and the
//   scale are applied once per 64 columns: total += (acc - 8 * sum_k x'[k]) * scale.
// - T tokens: per 8 weights AND, integer -8 << 4k, convert, multiply by the scale (q * scale * 2^4k, exact), then
//   one FMA per token, in tiles of R rows x 4 tokens; the rows' bytes are read from memory once for all T tokens.
// Called through ctypes (the GIL is released while it runs); built and bound by kernels/cpu_int4.py.

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

namespace {

constexpr int64_t kBlock = 64;  // columns per 256-bit load of packed words

// The accumulators must stay in registers: every helper of the inner loop is inlined into it.
#define KI inline __attribute__((always_inline))

struct Prepped {
  const float* xp;  // [T, nblk, 8 k, 8 j]: x[8j+k] * 2^-4k (k < 7), x[8j+7] (k = 7); zero past `in`
  const float* xs;  // [T, nblk, 8 j]: 8 * sum_k x[8j+k]
  int64_t nblk;
};

inline int64_t nblocks(int64_t in) { return (in + kBlock - 1) / kBlock; }

// Permute and pre-scale `T` rows of x (row stride `in`) for columns [b0, b1) blocks.
void prep(const float* x, int64_t T, int64_t in, int64_t b0, int64_t b1, float* xp, float* xs) {
  static const float kscale[8] = {1.0f, 0x1p-4f, 0x1p-8f, 0x1p-12f, 0x1p-16f, 0x1p-20f, 0x1p-24f, 1.0f};
  const int64_t nblk = nblocks(in);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t b = b0; b < b1; ++b) {
      float* p = xp + (t * nblk + b) * 64;
      float* s = xs + (t * nblk + b) * 8;
      for (int j = 0; j < 8; ++j) {
        float sum = 0.0f;
        for (int k = 0; k < 8; ++k) {
          const int64_t c = b * kBlock + 8 * j + k;
          const float v = c < in ? x[t * in + c] : 0.0f;
          p[k * 8 + j] = v * kscale[k];
          sum += v;
        }
        s[j] = 8.0f * sum;
      }
    }
  }
}

KI float bf16_to_f32(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

KI float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Nibble k of every word in `w`, times 2^(4k), as floats (k = 7: the nibble itself; the shift avoids the sign bit).
template <int K>
KI __m256 nib(__m256i w) {
  if constexpr (K == 7) {
    return _mm256_cvtepi32_ps(_mm256_srli_epi32(w, 28));
  } else {
    return _mm256_cvtepi32_ps(_mm256_and_si256(w, _mm256_set1_epi32(0xF << (4 * K))));
  }
}

// The same, offset: q * 2^(4k) = (n - 8) * 2^(4k), still exact (the subtraction is on integers).
template <int K>
KI __m256 qnib(__m256i w) {
  if constexpr (K == 7) {
    return _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(w, 28), _mm256_set1_epi32(8)));
  } else {
    return _mm256_cvtepi32_ps(
        _mm256_sub_epi32(_mm256_and_si256(w, _mm256_set1_epi32(0xF << (4 * K))), _mm256_set1_epi32(8 << (4 * K))));
  }
}

// Few tokens, R rows (decode): acc += nib_k(w) * x'_k over the 8 k of a block, then per block
// tot += (acc - 8 * sum_k x'_k) * scale -- the fewest FMA-port operations per weight (TT + TT/8 per 8 weights), at
// the price of two registers per (row, token).
template <int R, int TT, int K>
KI void split_k(const __m256i (&w)[R], const float* const (&xb)[TT], __m256 (&acc)[R][TT]) {
  __m256 xk[TT];
  for (int t = 0; t < TT; ++t) xk[t] = _mm256_loadu_ps(xb[t] + K * 8);
  for (int r = 0; r < R; ++r) {
    const __m256 wf = nib<K>(w[r]);
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_fmadd_ps(wf, xk[t], acc[r][t]);
  }
}

template <int R, int TT>
struct Split {
  __m256 tot[R][TT];
  Split() {
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < TT; ++t) tot[r][t] = _mm256_setzero_ps();
  }
  KI void block(const __m256i (&w)[R], const __m256 (&sv)[R], const Prepped& xp, int64_t t0, int64_t b) {
    const float* xb[TT];
    for (int t = 0; t < TT; ++t) xb[t] = xp.xp + ((t0 + t) * xp.nblk + b) * 64;
    __m256 acc[R][TT];
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_setzero_ps();
    split_k<R, TT, 0>(w, xb, acc);
    split_k<R, TT, 1>(w, xb, acc);
    split_k<R, TT, 2>(w, xb, acc);
    split_k<R, TT, 3>(w, xb, acc);
    split_k<R, TT, 4>(w, xb, acc);
    split_k<R, TT, 5>(w, xb, acc);
    split_k<R, TT, 6>(w, xb, acc);
    split_k<R, TT, 7>(w, xb, acc);
    for (int t = 0; t < TT; ++t) {
      const __m256 s = _mm256_loadu_ps(xp.xs + ((t0 + t) * xp.nblk + b) * 8);
      for (int r = 0; r < R; ++r) tot[r][t] = _mm256_fmadd_ps(_mm256_sub_ps(acc[r][t], s), sv[r], tot[r][t]);
    }
  }
  KI float result(int r, int t) const { return hsum(tot[r][t]); }
};

// TT tokens, R rows: each weight vector is dequantized once (q * scale, exact) and FMAed against the TT tokens;
// one accumulator per (row, token), so R * TT can be 8 without spilling.
template <int R, int TT, int K>
KI void tokens_k(const __m256i (&w)[R], const __m256 (&sv)[R], const float* const (&xb)[TT],
                     __m256 (&tot)[R][TT]) {
  __m256 dq[R];
  for (int r = 0; r < R; ++r) dq[r] = _mm256_mul_ps(qnib<K>(w[r]), sv[r]);
  for (int t = 0; t < TT; ++t) {
    const __m256 xk = _mm256_loadu_ps(xb[t] + K * 8);
    for (int r = 0; r < R; ++r) tot[r][t] = _mm256_fmadd_ps(dq[r], xk, tot[r][t]);
  }
}

template <int R, int TT>
struct Tokens {
  __m256 tot[R][TT];
  Tokens() {
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < TT; ++t) tot[r][t] = _mm256_setzero_ps();
  }
  KI void block(const __m256i (&w)[R], const __m256 (&sv)[R], const Prepped& xp, int64_t t0, int64_t b) {
    const float* xb[TT];
    for (int t = 0; t < TT; ++t) xb[t] = xp.xp + ((t0 + t) * xp.nblk + b) * 64;
    tokens_k<R, TT, 0>(w, sv, xb, tot);
    tokens_k<R, TT, 1>(w, sv, xb, tot);
    tokens_k<R, TT, 2>(w, sv, xb, tot);
    tokens_k<R, TT, 3>(w, sv, xb, tot);
    tokens_k<R, TT, 4>(w, sv, xb, tot);
    tokens_k<R, TT, 5>(w, sv, xb, tot);
    tokens_k<R, TT, 6>(w, sv, xb, tot);
    tokens_k<R, TT, 7>(w, sv, xb, tot);
  }
  KI float result(int r, int t) const { return hsum(tot[r][t]); }
};

// out[t0 + t][row0 + r] for r < R, t < TT: R rows of the matrix against TT prepared tokens.
template <int R, int TT>
void rows_tokens(const int32_t* packed, const uint16_t* scale, int64_t in, int64_t n_out, int64_t row0, int64_t t0,
                 const Prepped& xp, float* out) {
  const int64_t wpr = in / 8, ng = in / 32, nfull = in / kBlock, nblk = xp.nblk;
  const int32_t* wrow[R];
  const uint16_t* srow[R];
  for (int r = 0; r < R; ++r) {
    wrow[r] = packed + (row0 + r) * wpr;
    srow[r] = scale + (row0 + r) * ng;
  }
  // Split is faster for 1-2 tokens (measured: 1.16 and 0.80 cycles per 8 weights per token, hot, one core), Tokens
  // from 3 up (0.77 at 8+), where Split's two registers per (row, token) would spill.
  std::conditional_t<TT <= 2, Split<R, TT>, Tokens<R, TT>> acc;
  int64_t b = 0;
  // Four blocks (256 columns, 8 groups) at a time: one 16-byte load of 8 bf16 scales per row, permuted per block.
  for (; b + 4 <= nfull; b += 4) {
    __m256 s8[R];
    for (int r = 0; r < R; ++r) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(srow[r] + 2 * b));
      s8[r] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    for (int bb = 0; bb < 4; ++bb) {
      const __m256i idx = _mm256_setr_epi32(2 * bb, 2 * bb, 2 * bb, 2 * bb, 2 * bb + 1, 2 * bb + 1, 2 * bb + 1,
                                            2 * bb + 1);
      __m256i w[R];
      __m256 sv[R];
      for (int r = 0; r < R; ++r) {
        w[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wrow[r] + (b + bb) * 8));
        sv[r] = _mm256_permutevar8x32_ps(s8[r], idx);
        // Prefetch the same columns of the next R rows (one 64-byte line per two blocks), a whole row group ahead:
        // the hardware prefetcher alone left cold T = 1 at 6 GB/s per core against 9.5 with the weights in cache;
        // with this, 8-9 (prefetching the scales too made no difference). Past the last row it is a no-op (prefetches
        // never fault).
        if (bb % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(wrow[r] + R * wpr + (b + bb) * 8), _MM_HINT_T0);
      }
      acc.block(w, sv, xp, t0, b + bb);
    }
  }
  // Remaining blocks; the last may be half a block (32 columns: 4 words, one group; the upper lanes stay zero).
  for (; b < nblk; ++b) {
    const bool half = b == nfull;
    __m256i w[R];
    __m256 sv[R];
    for (int r = 0; r < R; ++r) {
      const int32_t* p = wrow[r] + b * 8;
      w[r] = half ? _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))
                  : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      const float lo = bf16_to_f32(srow[r][2 * b]);
      const float hi = half ? 0.0f : bf16_to_f32(srow[r][2 * b + 1]);
      sv[r] = _mm256_setr_ps(lo, lo, lo, lo, hi, hi, hi, hi);
    }
    acc.block(w, sv, xp, t0, b);
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) out[(t0 + t) * n_out + row0 + r] = acc.result(r, t);
}

// Rows [row0, row0 + 4) (or one row, R4 = false) for all T tokens: the rows' 4 x in/2 bytes are read from memory
// once and stay in L1 while the tokens go by in chunks of 4 (2 x 4 tiles), 3 (2 x 3), 2 (4 x 2) and 1.
template <bool R4>
void row_block(const int32_t* packed, const uint16_t* scale, int64_t in, int64_t n_out, int64_t row0, int64_t T,
               const Prepped& xp, float* out) {
  constexpr int R = R4 ? 4 : 1, RH = R4 ? 2 : 1;
  int64_t t = 0;
  for (; t + 4 <= T; t += 4)
    for (int r = 0; r < R; r += RH) rows_tokens<RH, 4>(packed, scale, in, n_out, row0 + r, t, xp, out);
  if (T - t == 3)
    for (int r = 0; r < R; r += RH) rows_tokens<RH, 3>(packed, scale, in, n_out, row0 + r, t, xp, out);
  else if (T - t == 2)
    rows_tokens<R, 2>(packed, scale, in, n_out, row0, t, xp, out);
  else if (T - t == 1)
    rows_tokens<R, 1>(packed, scale, in, n_out, row0, t, xp, out);
}

// Rows [r0, r1) of one matrix for all T tokens, on the calling thread.
void linear_rows(const int32_t* packed, const uint16_t* scale, int64_t in, int64_t n_out, int64_t r0, int64_t r1,
                 int64_t T, const Prepped& xp, float* out) {
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) row_block<true>(packed, scale, in, n_out, r, T, xp, out);
  for (; r < r1; ++r) row_block<false>(packed, scale, in, n_out, r, T, xp, out);
}

// Rows are handed out in chunks of kChunk, dynamically: on a shared or throttled machine a thread that falls behind
// gets fewer chunks instead of holding everyone at the barrier.
constexpr int64_t kChunk = 64;

struct Scratch {
  float* p = nullptr;
  explicit Scratch(int64_t n) {
    if (n > 0) p = static_cast<float*>(std::aligned_alloc(64, ((n * 4 + 63) / 64) * 64));
  }
  ~Scratch() { std::free(p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

}  // namespace

extern "C" {

// x [T, in] float32, packed [n_out, in/8] int32, scale [n_out, in/32] bf16 bits -> out [T, n_out] float32.
// Returns 0, or -1 when the scratch could not be allocated. in must be a multiple of 32.
int kimi_int4_linear(const float* x, int64_t T, int64_t in, const int32_t* packed, const uint16_t* scale,
                     int64_t n_out, float* out, int n_threads) {
  if (T <= 0 || n_out <= 0) return 0;
  const int64_t nblk = nblocks(in);
  Scratch xp(T * nblk * 64), xs(T * nblk * 8);
  if (!xp.p || !xs.p) return -1;
  prep(x, T, in, 0, nblk, xp.p, xs.p);
  const Prepped px{xp.p, xs.p, nblk};
  const int64_t nchunks = (n_out + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads)
  for (int64_t c = 0; c < nchunks; ++c)
    linear_rows(packed, scale, in, n_out, c * kChunk, std::min(n_out, (c + 1) * kChunk), T, px, out);
  return 0;
}

// One expert: out [T, D] = down(silu(gate x) * up x); gate/up [I, D], down [D, I]. One parallel region: a chunk of
// 64 rows of gate and up is one 64-column block of the down input, so the thread that makes it also applies
// silu * up and prepares the block; after the loop's barrier the down rows are shared out the same way.
int kimi_int4_expert_ffn(const float* x, int64_t T, int64_t D, int64_t I, const int32_t* gp, const uint16_t* gs,
                         const int32_t* up, const uint16_t* us, const int32_t* dp, const uint16_t* ds, float* out,
                         int n_threads) {
  static_assert(kChunk == kBlock, "a gate/up chunk must be one block of the down input");
  if (T <= 0) return 0;
  const int64_t nbD = nblocks(D), nbI = nblocks(I);
  Scratch xp(T * nbD * 64), xs(T * nbD * 8), g(T * I), u(T * I), hp(T * nbI * 64), hs(T * nbI * 8);
  if (!xp.p || !xs.p || !g.p || !u.p || !hp.p || !hs.p) return -1;
  prep(x, T, D, 0, nbD, xp.p, xs.p);
  const Prepped px{xp.p, xs.p, nbD}, ph{hp.p, hs.p, nbI};
  const int64_t nchunks_d = (D + kChunk - 1) / kChunk;
#pragma omp parallel num_threads(n_threads)
  {
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < nbI; ++b) {
      const int64_t lo = b * kChunk, hi = std::min(I, lo + kChunk);
      linear_rows(gp, gs, D, I, lo, hi, T, px, g.p);
      linear_rows(up, us, D, I, lo, hi, T, px, u.p);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = lo; i < hi; ++i) {
          const float a = g.p[t * I + i];
          g.p[t * I + i] = a / (1.0f + std::exp(-a)) * u.p[t * I + i];
        }
      prep(g.p, T, I, b, b + 1, hp.p, hs.p);
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < nchunks_d; ++c)
      linear_rows(dp, ds, I, D, c * kChunk, std::min(D, (c + 1) * kChunk), T, ph, out);
  }
  return 0;
}

// The routed experts of one MoE layer: out [T, D] = sum over experts e of w * expert_e(x[t]) for the (t, w) pairs
// routed to e. ptrs [E, 6]: gate packed, gate scale, up packed, up scale, down packed, down scale of each expert
// (all the same D and I); pairs [begin[e], end[e]) of tokens/wts are expert e's. Each expert runs once on its
// tokens, gathered; each token appears at most once per expert, so the scatter-add has no races.
int kimi_int4_grouped_ffn(const float* x, int64_t T, int64_t D, int64_t I, int64_t E, const int64_t* ptrs,
                          const int64_t* begin, const int64_t* end, const int64_t* tokens, const float* wts, float* out,
                          int n_threads) {
  std::memset(out, 0, sizeof(float) * T * D);
  int64_t most = 0;
  for (int64_t e = 0; e < E; ++e) most = std::max(most, end[e] - begin[e]);
  Scratch xg(most * D), yg(most * D);
  if (most > 0 && (!xg.p || !yg.p)) return -1;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = end[e] - begin[e];
    if (n <= 0) continue;
    const int64_t* tok = tokens + begin[e];
    const float* w = wts + begin[e];
    for (int64_t j = 0; j < n; ++j) std::memcpy(xg.p + j * D, x + tok[j] * D, sizeof(float) * D);
    const int64_t* p = ptrs + 6 * e;
    auto ptr = [](int64_t v) { return reinterpret_cast<const void*>(static_cast<intptr_t>(v)); };
    const int rc = kimi_int4_expert_ffn(
        xg.p, n, D, I, static_cast<const int32_t*>(ptr(p[0])), static_cast<const uint16_t*>(ptr(p[1])),
        static_cast<const int32_t*>(ptr(p[2])), static_cast<const uint16_t*>(ptr(p[3])),
        static_cast<const int32_t*>(ptr(p[4])), static_cast<const uint16_t*>(ptr(p[5])), yg.p, n_threads);
    if (rc != 0) return rc;
#pragma omp parallel for num_threads(n_threads) if (n * D >= (1 << 16))
    for (int64_t j = 0; j < n; ++j) {
      float* o = out + tok[j] * D;
      const float* y = yg.p + j * D;
      for (int64_t c = 0; c < D; ++c) o[c] += w[j] * y[c];
    }
  }
  return 0;
}

}  // extern "C"
