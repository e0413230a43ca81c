// ggml-quantized matmul and MoE layer on the CPU, on a GGUF file's mapped bytes in place, with int8 activations.
//
// Every supported type decodes a row into one common form: int8 codes q, a float scale per 16 weights and, for the
// types with minimums, a float minimum per 16, so that w = scale * q - min exactly (IQ1's +-1/8 offset becomes an
// integer: q = 8 * grid +- 1 with the scale divided by 8). Activations are quantized to int8 with a float scale
// (amax / 127) per 32 for the 32-weight types (as ggml's Q8_0) and per 256 for the K- and IQ-types (as its Q8_K),
// and their per-16 sums kept for the minimum term. One output is then
//   sum_b  a_scale_b * sum_{g in b} scale_g * <q_g, a_g>   -   sum_g min_g * a_scale_b(g) * sum(a_g)
// with the inner products in int32: AVX2 (maddubs/madd), or AVX-512 VNNI (dpbusd on 512-bit vectors) in the build
// compiled with those flags; kernels/cpu_ggml.py picks the build the CPU can run.
//
// Rows are decoded R at a time into a per-thread buffer (L1-sized for K2.5's rows) and each decoded tile is used by
// every token of the call, so the mapped bytes are read once per call whatever the token count. One output element
// is computed by one thread in a fixed order: results do not depend on the thread count.
// Called through ctypes (the GIL is released while it runs); built and bound by kernels/cpu_ggml.py.

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "bf16.h"  // bf16 <-> float32 (the attention's cache rows, INT4 scales)

namespace {

#define KI inline __attribute__((always_inline))

constexpr int kPrefetch = 2048;  // bytes ahead of a row's read that are prefetched (~1.5x from DRAM at 2-3 KB)

enum Type : int {
  Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, MXFP4,
  Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, TQ1_0, TQ2_0,
  IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_XS,
  NTYPES
};

struct TypeInfo {
  const char* name;
  int block;      // weights per block
  int bytes;      // bytes per block
  bool has_min;   // w = scale * q - min with a non-zero min
  bool uns;       // codes are 0..127: the dot multiplies them as unsigned bytes (no sign juggling)
};

const TypeInfo kTypes[NTYPES] = {
    {"q4_0", 32, 18, false, false},     {"q4_1", 32, 20, true, true},      {"q5_0", 32, 22, false, false},
    {"q5_1", 32, 24, true, true},       {"q8_0", 32, 34, false, false},    {"iq4_nl", 32, 18, false, false},
    {"mxfp4", 32, 17, false, false},    {"q2_k", 256, 84, true, true},     {"q3_k", 256, 110, true, true},
    {"q4_k", 256, 144, true, true},     {"q5_k", 256, 176, true, true},    {"q6_k", 256, 210, true, true},
    {"tq1_0", 256, 54, true, true},     {"tq2_0", 256, 66, true, true},    {"iq1_s", 256, 50, false, false},
    {"iq1_m", 256, 56, false, false},   {"iq2_xxs", 256, 66, false, false}, {"iq2_xs", 256, 74, false, false},
    {"iq2_s", 256, 82, false, false},   {"iq3_xxs", 256, 98, false, false}, {"iq3_s", 256, 110, false, false},
    {"iq4_xs", 256, 136, false, false},
};

// Format constants (ggml-common.h), handed over once by kimi_ggml_set_tables from gguf-py's copies.
struct Tables {
  int8_t iq1s[2048][8];
  int8_t iq2xxs[256][8];
  int8_t iq2xs[512][8];
  int8_t iq2s[1024][8];
  int8_t iq3xxs[256][4];
  int8_t iq3s[512][4];
  uint8_t ksigns[128];
  int8_t iq4nl[16];
  int8_t mxfp4[16];
};
Tables g_tab;
int8_t g_iq1s8[2048][8];         // 8 * iq1s grid: IQ1's codes are 8 * grid +- 1
int8_t g_sign_factors[256][8];   // bit j of the index set: factor j is -1, else +1
alignas(32) int8_t g_iq1m_offsets[16][32];  // bit j of the index set: entry j's 8 offsets are -1, else +1
uint64_t g_ksign_factors[128];   // the 8 factors of ksigns[i], as one word (IQ2 / IQ3 sign indices)
bool g_tables_set = false;

KI float f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}
KI uint16_t u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
KI uint32_t u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// ---- decoders: one block -> q [block], scale and min per 16 weights ------------------------------------------------
// (sc, mn hold block / 16 entries; mn is only written for has_min types.)

KI __m128i lo_nib(__m128i v) { return _mm_and_si128(v, _mm_set1_epi8(15)); }
KI __m128i hi_nib(__m128i v) { return _mm_and_si128(_mm_srli_epi16(v, 4), _mm_set1_epi8(15)); }
KI __m256i lo_nib(__m256i v) { return _mm256_and_si256(v, _mm256_set1_epi8(15)); }
KI __m256i hi_nib(__m256i v) { return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(15)); }
KI __m128i load16(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
KI __m256i load32(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
KI void store16(int8_t* p, __m128i v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v); }
KI void store32(int8_t* p, __m256i v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }

KI void nibbles32(const uint8_t* qs, int8_t* q, int off) {  // planes: low nibbles are 0..15, high ones 16..31
  const __m128i v = load16(qs), o = _mm_set1_epi8(static_cast<char>(off));
  store16(q, _mm_sub_epi8(lo_nib(v), o));
  store16(q + 16, _mm_sub_epi8(hi_nib(v), o));
}
KI void lookup32(const uint8_t* qs, const int8_t* table, int8_t* q) {  // nibble planes -> table values
  const __m128i v = load16(qs), t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(table));
  store16(q, _mm_shuffle_epi8(t, lo_nib(v)));
  store16(q + 16, _mm_shuffle_epi8(t, hi_nib(v)));
}

KI void dec_q4_0(const uint8_t* b, int8_t* q, float* sc, float*) {
  nibbles32(b + 2, q, 8);
  sc[0] = sc[1] = f16(b);
}
KI void dec_q4_1(const uint8_t* b, int8_t* q, float* sc, float* mn) {
  nibbles32(b + 4, q, 0);
  sc[0] = sc[1] = f16(b);
  mn[0] = mn[1] = -f16(b + 2);
}
KI void q5(const uint8_t* qh4, const uint8_t* qs, int8_t* q, int off) {
  const uint32_t qh = u32(qh4);
  for (int j = 0; j < 16; ++j) {
    q[j] = static_cast<int8_t>(((qs[j] & 15) | ((qh >> j) & 1) << 4) - off);
    q[j + 16] = static_cast<int8_t>(((qs[j] >> 4) | ((qh >> (j + 16)) & 1) << 4) - off);
  }
}
KI void dec_q5_0(const uint8_t* b, int8_t* q, float* sc, float*) {
  q5(b + 2, b + 6, q, 16);
  sc[0] = sc[1] = f16(b);
}
KI void dec_q5_1(const uint8_t* b, int8_t* q, float* sc, float* mn) {
  q5(b + 4, b + 8, q, 0);
  sc[0] = sc[1] = f16(b);
  mn[0] = mn[1] = -f16(b + 2);
}
KI void dec_q8_0(const uint8_t* b, int8_t* q, float* sc, float*) {
  std::memcpy(q, b + 2, 32);
  sc[0] = sc[1] = f16(b);
}
KI void dec_iq4_nl(const uint8_t* b, int8_t* q, float* sc, float*) {
  lookup32(b + 2, g_tab.iq4nl, q);
  sc[0] = sc[1] = f16(b);
}
KI void dec_mxfp4(const uint8_t* b, int8_t* q, float* sc, float*) {
  lookup32(b + 1, g_tab.mxfp4, q);
  sc[0] = sc[1] = std::ldexp(1.0f, static_cast<int>(b[0]) - 128);
}

// 2-bit planes per 128: weight 128h + 32s + l is bits 2s, 2s+1 of byte 32h + l.
KI void planes2(const uint8_t* qs, int8_t* q, int off) {
  const __m256i three = _mm256_set1_epi8(3), o = _mm256_set1_epi8(static_cast<char>(off));
  for (int h = 0; h < 2; ++h) {
    const __m256i v = load32(qs + 32 * h);
    store32(q + 128 * h, _mm256_sub_epi8(_mm256_and_si256(v, three), o));
    store32(q + 128 * h + 32, _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(v, 2), three), o));
    store32(q + 128 * h + 64, _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(v, 4), three), o));
    store32(q + 128 * h + 96, _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(v, 6), three), o));
  }
}
// 0xFF in the bytes of v whose bit `bit` is set
KI __m256i bit_set(__m256i v, int bit) {
  const __m256i m = _mm256_set1_epi8(static_cast<char>(1 << bit));
  return _mm256_cmpeq_epi8(_mm256_and_si256(v, m), m);
}

KI void dec_q2_k(const uint8_t* b, int8_t* q, float* sc, float* mn) {
  planes2(b + 16, q, 0);
  const float d = f16(b + 80), dmin = f16(b + 82);
  for (int g = 0; g < 16; ++g) {
    sc[g] = d * static_cast<float>(b[g] & 15);
    mn[g] = dmin * static_cast<float>(b[g] >> 4);
  }
}
// Q3_K's 12 bytes of 6-bit scales (4 low bits, then 2 high bits four at a time) -> 16 signed scales
// Q3_K's 12 bytes of 6-bit scales (4 low bits of group g: bytes 0-7, low nibbles then high ones; 2 high bits: byte
// 8 + g % 4, bits 2 (g / 4)) -> 16 bytes, group g's 6 bits in byte g (before the -32)
KI __m128i q3_scale_bytes(const uint8_t* s) {
  uint32_t a[3], u[4];
  std::memcpy(a, s, 12);
  for (int j = 0; j < 4; ++j)
    u[j] = ((a[j % 2] >> (4 * (j / 2))) & 0x0f0f0f0fu) | (((a[2] >> (2 * j)) & 0x03030303u) << 4);
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(u));
}
KI void q3_scales(const uint8_t* s, int16_t* sc) {  // -> 16 signed scales
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(sc),
                      _mm256_sub_epi16(_mm256_cvtepu8_epi16(q3_scale_bytes(s)), _mm256_set1_epi16(32)));
}
KI void dec_q3_k(const uint8_t* b, int8_t* q, float* sc, float* mn) {  // scale * (low + 4h - 4)
  planes2(b + 32, q, 0);
  const __m256i hm = load32(b), four = _mm256_set1_epi8(4);
  for (int s = 0; s < 8; ++s) {
    int8_t* p = q + 32 * s;
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    store32(p, _mm256_add_epi8(v, _mm256_and_si256(bit_set(hm, s), four)));
  }
  int16_t s16[16];
  q3_scales(b + 96, s16);
  const float d = f16(b + 108);
  for (int g = 0; g < 16; ++g) {
    sc[g] = d * static_cast<float>(s16[g]);
    mn[g] = 4.0f * sc[g];
  }
}
// Q4_K's 12 bytes of 6-bit scales and mins -> u: 8 scales then 8 mins, one byte each (scales 0-3 and mins 0-3 are
// the low 6 bits of bytes 0-3 and 4-7; 4-7 take 4 bits from bytes 8-11 and their top 2 from the top of bytes 0-7)
KI void k4_unpack(const uint8_t* s12, uint32_t u[4]) {
  std::memcpy(u, s12, 12);
  u[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);
  const uint32_t mins03 = u[1] & 0x3f3f3f3fu;
  u[1] = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);
  u[2] = mins03;
  u[0] &= 0x3f3f3f3fu;
}
// nibble planes per 64: weight 64c + l is the low nibble of byte 32c + l, 64c + 32 + l the high one
KI void nibbles64(const uint8_t* qs, int8_t* q) {
  for (int c = 0; c < 4; ++c) {
    const __m256i v = load32(qs + 32 * c);
    store32(q + 64 * c, lo_nib(v));
    store32(q + 64 * c + 32, hi_nib(v));
  }
}
KI void k4_scales_all(const uint8_t* b, float* sc, float* mn) {
  const float d = f16(b), dmin = f16(b + 2);
  uint32_t u[4];
  k4_unpack(b + 4, u);
  const uint8_t* sm = reinterpret_cast<const uint8_t*>(u);
  for (int j = 0; j < 8; ++j) {
    sc[2 * j] = sc[2 * j + 1] = d * static_cast<float>(sm[j]);
    mn[2 * j] = mn[2 * j + 1] = dmin * static_cast<float>(sm[8 + j]);
  }
}
KI void dec_q4_k(const uint8_t* b, int8_t* q, float* sc, float* mn) {
  nibbles64(b + 16, q);
  k4_scales_all(b, sc, mn);
}
KI void dec_q5_k(const uint8_t* b, int8_t* q, float* sc, float* mn) {
  nibbles64(b + 48, q);
  const __m256i qh = load32(b + 16), sixteen = _mm256_set1_epi8(16);
  for (int s = 0; s < 8; ++s) {
    int8_t* p = q + 32 * s;
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    store32(p, _mm256_or_si256(v, _mm256_and_si256(bit_set(qh, s), sixteen)));
  }
  k4_scales_all(b, sc, mn);
}
KI void dec_q6_k(const uint8_t* b, int8_t* q, float* sc, float* mn) {  // scale * (n - 32)
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const __m256i three = _mm256_set1_epi8(3);
  for (int h = 0; h < 2; ++h) {
    const __m256i l0 = load32(ql + 64 * h), l1 = load32(ql + 64 * h + 32), hv = load32(qh + 32 * h);
    const __m256i low[4] = {lo_nib(l0), lo_nib(l1), hi_nib(l0), hi_nib(l1)};
    for (int s = 0; s < 4; ++s) {
      const __m256i hb = _mm256_and_si256(_mm256_srli_epi16(hv, 2 * s), three);
      store32(q + 128 * h + 32 * s, _mm256_or_si256(low[s], _mm256_slli_epi16(hb, 4)));
    }
  }
  const float d = f16(b + 208);
  for (int g = 0; g < 16; ++g) {
    sc[g] = d * static_cast<float>(static_cast<int8_t>(b[192 + g]));
    mn[g] = 32.0f * sc[g];
  }
}
KI int trit(int x, int k) {
  static const int pow3[5] = {1, 3, 9, 27, 81};
  return (((x * pow3[k]) & 255) * 3) >> 8;
}
KI void dec_tq1_0(const uint8_t* b, int8_t* q, float* sc, float* mn) {  // d * (digit - 1)
  for (int k = 0; k < 5; ++k) {
    for (int i = 0; i < 32; ++i) q[32 * k + i] = static_cast<int8_t>(trit(b[i], k));
    for (int i = 0; i < 16; ++i) q[160 + 16 * k + i] = static_cast<int8_t>(trit(b[32 + i], k));
  }
  for (int k = 0; k < 4; ++k)
    for (int i = 0; i < 4; ++i) q[240 + 4 * k + i] = static_cast<int8_t>(trit(b[48 + i], k));
  const float d = f16(b + 52);
  for (int g = 0; g < 16; ++g) sc[g] = mn[g] = d;
}
KI void dec_tq2_0(const uint8_t* b, int8_t* q, float* sc, float* mn) {
  planes2(b, q, 0);
  const float d = f16(b + 64);
  for (int g = 0; g < 16; ++g) sc[g] = mn[g] = d;
}
// 8 grid values with sign bits applied (bit j set: weight j negated), `mul` and `add` applied: mul * v + add
KI void grid8(const int8_t* grid, unsigned signs, int8_t* q) {
  const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(grid));
  const __m128i f = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(g_sign_factors[signs & 255]));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(q), _mm_sign_epi8(v, f));
}
KI void grid8_iq1(const int8_t* grid8x, int add, int8_t* q) {  // 8 * grid + add (grid8x holds 8 * grid)
  const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(grid8x));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(q), _mm_add_epi8(v, _mm_set1_epi8(static_cast<char>(add))));
}
KI void dec_iq1_s(const uint8_t* b, int8_t* q, float* sc, float*) {
  const float d = f16(b);
  for (int l = 0; l < 8; ++l) {
    const unsigned qh = u16(b + 34 + 2 * l);
    const int add = (qh & 0x8000) ? -1 : 1;
    for (int k = 0; k < 4; ++k) {
      const int index = b[2 + 4 * l + k] | ((qh >> (3 * k)) & 7) << 8;
      grid8_iq1(g_iq1s8[index], add, q + 32 * l + 8 * k);
    }
    sc[2 * l] = sc[2 * l + 1] = d * static_cast<float>(2 * ((qh >> 12) & 7) + 1) * 0.125f;
  }
}
KI void dec_iq1_m(const uint8_t* b, int8_t* q, float* sc, float*) {
  unsigned s4[4];
  unsigned dbits = 0;
  for (int k = 0; k < 4; ++k) {
    s4[k] = u16(b + 48 + 2 * k);
    dbits |= (s4[k] >> 12) << (4 * k);
  }
  const float d = _cvtsh_ss(static_cast<uint16_t>(dbits));
  for (int e = 0; e < 32; ++e) {
    const int nib = (b[32 + e / 2] >> (4 * (e % 2))) & 15;
    grid8_iq1(g_iq1s8[b[e] | (nib & 7) << 8], (nib & 8) ? -1 : 1, q + 8 * e);
  }
  for (int g = 0; g < 16; ++g) {
    const int s = (s4[g / 4] >> (3 * (g % 4))) & 7;
    sc[g] = d * static_cast<float>(2 * s + 1) * 0.125f;
  }
}
KI void dec_iq2_xxs(const uint8_t* b, int8_t* q, float* sc, float*) {
  const float d = f16(b);
  for (int l = 0; l < 8; ++l) {
    const uint8_t* g = b + 2 + 8 * l;
    const uint32_t aux = u32(g + 4);
    for (int k = 0; k < 4; ++k) grid8(g_tab.iq2xxs[g[k]], g_tab.ksigns[(aux >> (7 * k)) & 127], q + 32 * l + 8 * k);
    sc[2 * l] = sc[2 * l + 1] = d * (0.5f + static_cast<float>(aux >> 28)) * 0.25f;
  }
}
KI void dec_iq2_xs(const uint8_t* b, int8_t* q, float* sc, float*) {
  const float d = f16(b);
  for (int e = 0; e < 32; ++e) {
    const unsigned v = u16(b + 2 + 2 * e);
    grid8(g_tab.iq2xs[v & 511], g_tab.ksigns[v >> 9], q + 8 * e);
  }
  for (int g = 0; g < 16; ++g) sc[g] = d * (0.5f + static_cast<float>((b[66 + g / 2] >> (4 * (g % 2))) & 15)) * 0.25f;
}
KI void dec_iq2_s(const uint8_t* b, int8_t* q, float* sc, float*) {
  const float d = f16(b);
  for (int e = 0; e < 32; ++e) {
    const int index = b[2 + e] | ((b[66 + e / 4] >> (2 * (e % 4))) & 3) << 8;
    grid8(g_tab.iq2s[index], b[34 + e], q + 8 * e);
  }
  for (int g = 0; g < 16; ++g) sc[g] = d * (0.5f + static_cast<float>((b[74 + g / 2] >> (4 * (g % 2))) & 15)) * 0.25f;
}
KI void grid4x2(const int8_t* a, const int8_t* c, unsigned signs, int8_t* q) {
  int8_t g[8];
  std::memcpy(g, a, 4);
  std::memcpy(g + 4, c, 4);
  grid8(g, signs, q);
}
KI void dec_iq3_xxs(const uint8_t* b, int8_t* q, float* sc, float*) {
  const float d = f16(b);
  for (int l = 0; l < 8; ++l) {
    const uint32_t aux = u32(b + 66 + 4 * l);
    for (int k = 0; k < 4; ++k) {
      const uint8_t* idx = b + 2 + 8 * l + 2 * k;
      grid4x2(g_tab.iq3xxs[idx[0]], g_tab.iq3xxs[idx[1]], g_tab.ksigns[(aux >> (7 * k)) & 127], q + 32 * l + 8 * k);
    }
    sc[2 * l] = sc[2 * l + 1] = d * (0.5f + static_cast<float>(aux >> 28)) * 0.5f;
  }
}
KI void dec_iq3_s(const uint8_t* b, int8_t* q, float* sc, float*) {
  const float d = f16(b);
  for (int p = 0; p < 32; ++p) {  // 8 weights: entries 2p, 2p + 1
    const int e0 = 2 * p, e1 = 2 * p + 1;
    const int i0 = b[2 + e0] | ((b[66 + e0 / 8] >> (e0 % 8)) & 1) << 8;
    const int i1 = b[2 + e1] | ((b[66 + e1 / 8] >> (e1 % 8)) & 1) << 8;
    grid4x2(g_tab.iq3s[i0], g_tab.iq3s[i1], b[74 + p], q + 8 * p);
  }
  for (int l = 0; l < 8; ++l)
    sc[2 * l] = sc[2 * l + 1] = d * static_cast<float>(1 + 2 * ((b[106 + l / 2] >> (4 * (l % 2))) & 15));
}
KI void dec_iq4_xs(const uint8_t* b, int8_t* q, float* sc, float*) {
  const float d = f16(b);
  const unsigned sh = u16(b + 2);
  for (int j = 0; j < 8; ++j) {
    const int lo = (b[4 + j / 2] >> (4 * (j % 2))) & 15;
    const int hi = (sh >> (2 * j)) & 3;
    sc[2 * j] = sc[2 * j + 1] = d * static_cast<float>((lo | hi << 4) - 32);
    lookup32(b + 8 + 16 * j, g_tab.iq4nl, q + 32 * j);
  }
}

using Decoder = void (*)(const uint8_t*, int8_t*, float*, float*);
using RowDecoder = void (*)(const uint8_t*, int64_t, int8_t*, float*, float*);

// A row of `type` blocks; each block's decoder is inlined into the loop, its scales broadcast 4-wide.
template <Decoder DEC, int BLOCK, int BYTES, bool MIN>
void row_loop(const uint8_t* row, int64_t in, int8_t* q, float* sc8, float* mn) {
  constexpr int G = BLOCK / 16;
  float sc[G], m[G];
  for (int64_t k = 0; k < in / BLOCK; ++k) {
    _mm_prefetch(reinterpret_cast<const char*>(row + k * BYTES + kPrefetch), _MM_HINT_T0);
    DEC(row + k * BYTES, q + k * BLOCK, sc, m);
    if constexpr (BLOCK == 32) {  // one scale for the block: one 8-wide store
      _mm256_storeu_ps(sc8 + k * 8, _mm256_set1_ps(sc[0]));
    } else {
      for (int g = 0; g < G; ++g) _mm_storeu_ps(sc8 + (k * G + g) * 4, _mm_set1_ps(sc[g]));
    }
    if constexpr (MIN)
      for (int g = 0; g < G; ++g) mn[k * G + g] = m[g];
  }
}

#define ROW(dec, block, bytes, min) row_loop<dec, block, bytes, min>
const RowDecoder kRowDecoders[NTYPES] = {
    ROW(dec_q4_0, 32, 18, false),      ROW(dec_q4_1, 32, 20, true),       ROW(dec_q5_0, 32, 22, false),
    ROW(dec_q5_1, 32, 24, true),       ROW(dec_q8_0, 32, 34, false),      ROW(dec_iq4_nl, 32, 18, false),
    ROW(dec_mxfp4, 32, 17, false),     ROW(dec_q2_k, 256, 84, true),      ROW(dec_q3_k, 256, 110, true),
    ROW(dec_q4_k, 256, 144, true),     ROW(dec_q5_k, 256, 176, true),     ROW(dec_q6_k, 256, 210, true),
    ROW(dec_tq1_0, 256, 54, true),    ROW(dec_tq2_0, 256, 66, true),    ROW(dec_iq1_s, 256, 50, false),
    ROW(dec_iq1_m, 256, 56, false),    ROW(dec_iq2_xxs, 256, 66, false),  ROW(dec_iq2_xs, 256, 74, false),
    ROW(dec_iq2_s, 256, 82, false),    ROW(dec_iq3_xxs, 256, 98, false),  ROW(dec_iq3_s, 256, 110, false),
    ROW(dec_iq4_xs, 256, 136, false),
};
#undef ROW

// ---- a decoded tile of rows ----------------------------------------------------------------------------------------
// Per row: q [in] int8, sc8 [in / 32 * 8] (each per-16 scale repeated 4 times: the lanes of one int32 sum vector),
// mn [in / 16].
struct Rows {
  int8_t* q;
  float* sc8;
  float* mn;
  int64_t in;
};

KI void decode_row(int type, const uint8_t* row, int64_t in, int8_t* q, float* sc8, float* mn) {
  kRowDecoders[type](row, in, q, sc8, mn);
}

// ---- activations: int8 with a float scale per block ----------------------------------------------------------------
// Per token: q [in] int8, d8 [in / 32 * 8] (the scale of each 32's block, repeated 8 times), s16 [in / 16] = scale *
// sum of q, bs [in / 16] = sum of q (int16: at most 16 * 127); block = 32 (as ggml's Q8_0, for the legacy types)
// or 256 (as its Q8_K, for the K- and IQ-types: their registers paths then sum a whole super-block in int32 and
// convert to float once).
struct Act {
  int8_t* q;
  float* d8;
  float* s16;
  int16_t* bs;
  int block;
};

KI int act_block(int type) { return kTypes[type].block == 256 ? 256 : 32; }

KI float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// in % block == 0 (valid() and the callers see to it)
void quantize_act(const float* x, int64_t in, int8_t* q, float* d8, float* s16, int16_t* bs, int block) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int64_t b0 = 0; b0 < in / block; ++b0) {
    const float* xb = x + block * b0;
    __m256 amax = _mm256_setzero_ps();
    for (int j = 0; j < block; j += 8) amax = _mm256_max_ps(amax, _mm256_and_ps(_mm256_loadu_ps(xb + j), absmask));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float am = _mm_cvtss_f32(m4);
    const float d = am / 127.0f;
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    const __m256 vid = _mm256_set1_ps(id);
    for (int64_t b = block / 32 * b0; b < block / 32 * (b0 + 1); ++b) {
      int32_t sums[2] = {0, 0};
      for (int j = 0; j < 32; j += 8) {
        const __m256i v = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 32 * b + j), vid),
                                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        alignas(32) int32_t iv[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(iv), v);
        for (int k = 0; k < 8; ++k) {
          q[32 * b + j + k] = static_cast<int8_t>(iv[k]);
          sums[(j + k) / 16] += iv[k];
        }
      }
      for (int k = 0; k < 8; ++k) d8[8 * b + k] = d;
      s16[2 * b] = d * static_cast<float>(sums[0]);
      s16[2 * b + 1] = d * static_cast<float>(sums[1]);
      bs[2 * b] = static_cast<int16_t>(sums[0]);
      bs[2 * b + 1] = static_cast<int16_t>(sums[1]);
    }
  }
}

// ---- the dot products: R decoded rows against one token ------------------------------------------------------------
KI __m256i dot32(__m256i q, __m256i a) {  // int32 lanes 0-3: weights 0..15, lanes 4-7: 16..31
  const __m256i ax = _mm256_sign_epi8(q, q);
  const __m256i sy = _mm256_sign_epi8(a, q);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1));
#endif
}

KI __m256i dot32u(__m256i q, __m256i a) {  // q in 0..127
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, a);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), _mm256_set1_epi16(1));
#endif
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
KI __m512i dot64u(__m512i q, __m512i a) { return _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, a); }
KI __m512i dot64(__m512i q, __m512i a) {  // int32 lanes 4g..4g+3: weights 16g..16g+15
  const __m512i ax = _mm512_abs_epi8(q);
  const __mmask64 neg = _mm512_movepi8_mask(q);
  const __m512i sy = _mm512_mask_sub_epi8(a, neg, _mm512_setzero_si512(), a);
  return _mm512_dpbusd_epi32(_mm512_setzero_si512(), ax, sy);
}
#endif

template <int R, bool UNS>
KI void dot_rows(const Rows* rows, const Act& a, bool has_min, float* res) {
  const int64_t in = rows[0].in;
  const int64_t nb = in / 32;
  int64_t b = 0;
  float tail[R];
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
  __m512 acc5[R];
  for (int r = 0; r < R; ++r) acc5[r] = _mm512_setzero_ps();
  for (; b + 2 <= nb; b += 2) {
    const __m512i av = _mm512_loadu_si512(a.q + 32 * b);
    const __m512 ad = _mm512_loadu_ps(a.d8 + 8 * b);
    for (int r = 0; r < R; ++r) {
      const __m512i qv = _mm512_loadu_si512(rows[r].q + 32 * b);
      const __m512i s = UNS ? dot64u(qv, av) : dot64(qv, av);
      const __m512 f = _mm512_mul_ps(_mm512_loadu_ps(rows[r].sc8 + 8 * b), ad);
      acc5[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), f, acc5[r]);
    }
  }
  for (int r = 0; r < R; ++r) tail[r] = _mm512_reduce_add_ps(acc5[r]);
#else
  for (int r = 0; r < R; ++r) tail[r] = 0.0f;
#endif
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (; b < nb; ++b) {
    const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + 32 * b));
    const __m256 ad = _mm256_loadu_ps(a.d8 + 8 * b);
    for (int r = 0; r < R; ++r) {
      const __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[r].q + 32 * b));
      const __m256i s = UNS ? dot32u(qv, av) : dot32(qv, av);
      const __m256 f = _mm256_mul_ps(_mm256_loadu_ps(rows[r].sc8 + 8 * b), ad);
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), f, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) res[r] = hsum(acc[r]) + tail[r];
  if (has_min) {
    for (int r = 0; r < R; ++r) {
      __m256 m = _mm256_setzero_ps();
      const int64_t ng = in / 16;
      int64_t g = 0;
      for (; g + 8 <= ng; g += 8) m = _mm256_fmadd_ps(_mm256_loadu_ps(rows[r].mn + g), _mm256_loadu_ps(a.s16 + g), m);
      float mt = hsum(m);
      for (; g < ng; ++g) mt += rows[r].mn[g] * a.s16[g];
      res[r] -= mt;
    }
  }
}

constexpr int kR = 4;  // rows decoded per tile

// ---- one token against Q4_0 / Q8_0 rows, decoded in registers --------------------------------------------------
// A decode step's most common types (Q4_0 experts, Q8_0 everything else) skip the decoded tile: each 32-weight block
// becomes one vector of codes and meets the token's block at once (no stores, no reloads, no scale arrays).
// 32 weights as 16 bytes of nibbles (low ones 0..15, high ones 16..31), scale dw, against the token's block b with
// the codes taken unsigned (0..15): the 8 they are too high comes off later, through corr += dw * block sum
// (Q4_0's blocks, and the INT4 release's groups in int4_q8.h)
KI __m256 nibbles_block(const uint8_t* nib, float dw, const Act& a, int64_t b, __m256 acc, float& corr) {
  const __m128i v = load16(nib);
  const __m256i q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), _mm256_set1_epi8(15));
  const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + 32 * b));
  corr += dw * (a.s16[2 * b] + a.s16[2 * b + 1]);
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot32u(q, av)), _mm256_set1_ps(dw * a.d8[8 * b]), acc);
}

template <int TYPE>
KI __m256 fused_block(const uint8_t* blk, const Act& a, int64_t b, __m256 acc, float& corr) {
  if constexpr (TYPE == Q8_0) {
    const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + 32 * b));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot32(load32(blk + 2), av)), _mm256_set1_ps(f16(blk) * a.d8[8 * b]),
                           acc);
  } else {
    return nibbles_block(blk + 2, f16(blk), a, b, acc, corr);
  }
}

// One row against one token, two blocks per step into two accumulators (neighbouring blocks' multiply-adds do not
// wait for each other); Q4_0's codes are taken unsigned (0..15) and the 8 they are too high comes off at the end,
// through corr = sum of d * (the activations' block sums).
template <int TYPE>
KI float fused_row(const uint8_t* row, const Act& a, int64_t nb) {
  constexpr int BYTES = TYPE == Q8_0 ? 34 : 18;
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  float corr0 = 0.0f, corr1 = 0.0f;
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    const uint8_t* blk = row + b * BYTES;
    _mm_prefetch(reinterpret_cast<const char*>(blk + kPrefetch), _MM_HINT_T0);
    acc0 = fused_block<TYPE>(blk, a, b, acc0, corr0);
    acc1 = fused_block<TYPE>(blk + BYTES, a, b + 1, acc1, corr1);
  }
  if (b < nb) acc0 = fused_block<TYPE>(row + b * BYTES, a, b, acc0, corr0);
  return hsum(_mm256_add_ps(acc0, acc1)) - 8.0f * (corr0 + corr1);
}

template <int TYPE>
void fused_tile(const uint8_t* w, int64_t row_bytes, int64_t r0, int n, const Act& a, int64_t in, float* y) {
  // one row after the other: a thread reads its rows as one stream (4 short interleaved streams read ~1.5x slower
  // from DRAM, measured on bench's 512 x 2048 experts), the activations stay in L1 anyway
  for (int r = 0; r < n; ++r) y[r0 + r] = fused_row<TYPE>(w + (r0 + r) * row_bytes, a, in / 32);
}

// ---- one token against any other type: each block decoded into registers-sized stack buffers and used at once ------
// (no row-wide tile: at one token a decoded row is used once, and a tile of K2.5-wide rows spills out of L1.)
template <Decoder DEC, int BLOCK, int BYTES, bool MIN, bool UNS>
float fused_block_row(const uint8_t* row, const Act& a, int64_t in) {
  constexpr int G = BLOCK / 16;
  alignas(32) int8_t q[BLOCK];
  alignas(32) float sc[G], mn[G];
  __m256 acc = _mm256_setzero_ps(), macc = _mm256_setzero_ps();
  float mtail = 0.0f;
  for (int64_t k = 0; k < in / BLOCK; ++k) {
    const uint8_t* blk = row + k * BYTES;
    _mm_prefetch(reinterpret_cast<const char*>(blk + kPrefetch), _MM_HINT_T0);
    DEC(blk, q, sc, mn);
    const int8_t* aq = a.q + k * BLOCK;
    const float* ad = a.d8 + k * (BLOCK / 32) * 8;
    for (int s = 0; s < BLOCK / 32; ++s) {
      const __m256i qv = _mm256_load_si256(reinterpret_cast<const __m256i*>(q + 32 * s));
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(aq + 32 * s));
      const __m256i d = UNS ? dot32u(qv, av) : dot32(qv, av);  // lanes 0-3: group 2s, 4-7: group 2s + 1
      const __m256 f = _mm256_mul_ps(_mm256_set_m128(_mm_set1_ps(sc[2 * s + 1]), _mm_set1_ps(sc[2 * s])),
                                     _mm256_loadu_ps(ad + 8 * s));
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), f, acc);
    }
    if constexpr (MIN) {
      const float* s16 = a.s16 + k * G;
      if constexpr (G >= 8) {
        for (int g = 0; g < G; g += 8) macc = _mm256_fmadd_ps(_mm256_load_ps(mn + g), _mm256_loadu_ps(s16 + g), macc);
      } else {
        for (int g = 0; g < G; ++g) mtail += mn[g] * s16[g];
      }
    }
  }
  return hsum(acc) - (MIN ? hsum(macc) + mtail : 0.0f);
}

// The K-quants, fully in registers, against activations per 256 (Q8_K): codes times activations in int16 pairs
// (maddubs), times the block's integer sub-scales in int32 (madd), summed over the super-block in int32, then one
// float multiply-add per 256 weights by d * the activations' scale. The minimums meet the integer per-16 sums in
// int32 too.
// A super-block's 16 int16 scales (one per 16 weights) as the madd vector of each 32-weight sub-block s (int16 lanes
// 0-7: scale 2s, 8-15: scale 2s + 1): scales 0-7 (and 8-15) sit in both 128-bit halves of a register, and one byte
// shuffle per sub-block picks a pair (no broadcasts from scalars).
struct Scales16 {
  __m256i lo, hi;
  KI explicit Scales16(__m256i s16)
      : lo(_mm256_permute4x64_epi64(s16, 0x44)), hi(_mm256_permute4x64_epi64(s16, 0xEE)) {}
  KI __m256i sub(int s) const {
    return _mm256_shuffle_epi8(s < 4 ? lo : hi, _mm256_load_si256(reinterpret_cast<const __m256i*>(kPick[s & 3])));
  }
  // pair j: bytes 4j, 4j + 1 (scale 2j) in the low half, 4j + 2, 4j + 3 (scale 2j + 1) in the high one
#define P2(a) a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1, a, a + 1
  alignas(32) static constexpr int8_t kPick[4][32] = {{P2(0), P2(2)}, {P2(4), P2(6)}, {P2(8), P2(10)},
                                                      {P2(12), P2(14)}};
#undef P2
};
KI __m256i dot_scaled(__m256i q, const int8_t* a, __m256i scales) {  // q: unsigned codes <= 63
  return _mm256_madd_epi16(_mm256_maddubs_epi16(q, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a))), scales);
}

// The minimums' term of a super-block in int32, against the token's integer per-16 sums bs [16]:
// sum_j m_j * (bs_2j + bs_2j+1) for Q4_K's / Q5_K's 8 mins (bytes; 4 lanes) ...
KI __m128i k4_min_dot(const uint8_t* mins8, const int16_t* bs) {
  const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bs));
  const __m128i s32 = _mm_hadd_epi16(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));  // per-32 sums
  return _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mins8))), s32);
}
// ... and sum_g c_g * bs_g for 16 int16 coefficients c (8 lanes)
KI __m256i min_dot16(__m256i c, const int16_t* bs) {
  return _mm256_madd_epi16(c, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bs)));
}
KI float hsum128(__m128 v) {
  v = _mm_add_ps(v, _mm_movehl_ps(v, v));
  return _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)));
}

// Q4_K, and Q5_K (FIVE: the 5th bit of sub-block j is bit j of qh[32]); both share the 6-bit scales and mins.
// NT tokens at once: a super-block's codes and scales unpacked once for all of them (a prefill's few-token expert
// batches and its Linears), each token's sums in the same order as alone: out[j] is fused_k4 of token j, bit for bit.
template <bool FIVE, int NT>
KI void fused_k4_n(const uint8_t* row, const Act* a, int64_t in, float* out) {
  constexpr int BYTES = FIVE ? 176 : 144, QS = FIVE ? 48 : 16;
  __m256 acc[NT];
  __m128 macc[NT];
  for (int j = 0; j < NT; ++j) {
    acc[j] = _mm256_setzero_ps();
    macc[j] = _mm_setzero_ps();
  }
  const __m256i m15 = _mm256_set1_epi8(15), one = _mm256_set1_epi8(1);
  for (int64_t k = 0; k < in / 256; ++k) {
    const uint8_t* b = row + k * BYTES;
    _mm_prefetch(reinterpret_cast<const char*>(b + kPrefetch), _MM_HINT_T0);
    uint32_t u[4];
    k4_unpack(b + 4, u);
    const uint8_t* sm = reinterpret_cast<const uint8_t*>(u);
    const __m128i s8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(sm));  // one scale per 32: each twice
    const Scales16 scales(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(s8, s8)));
    __m256i isum[NT];
    for (int j = 0; j < NT; ++j) isum[j] = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {  // weights 64c.. (low nibbles, scale 2c) and 64c + 32.. (high, scale 2c + 1)
      const __m256i v = load32(b + QS + 32 * c);
      __m256i q0 = _mm256_and_si256(v, m15), q1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), m15);
      if constexpr (FIVE) {
        const __m256i hv = load32(b + 16);
        q0 = _mm256_or_si256(q0, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hv, 2 * c), one), 4));
        q1 = _mm256_or_si256(q1, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hv, 2 * c + 1), one), 4));
      }
      const __m256i s0 = scales.sub(2 * c), s1 = scales.sub(2 * c + 1);
      for (int j = 0; j < NT; ++j) {
        const int8_t* aq = a[j].q + 256 * k;
        const __m256i p0 = dot_scaled(q0, aq + 64 * c, s0);
        const __m256i p1 = dot_scaled(q1, aq + 64 * c + 32, s1);
        isum[j] = _mm256_add_epi32(isum[j], _mm256_add_epi32(p0, p1));
      }
    }
    for (int j = 0; j < NT; ++j) {
      const float da = a[j].d8[64 * k];
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[j]), _mm256_set1_ps(f16(b) * da), acc[j]);
      macc[j] = _mm_fmadd_ps(_mm_cvtepi32_ps(k4_min_dot(sm + 8, a[j].bs + 16 * k)), _mm_set1_ps(f16(b + 2) * da),
                             macc[j]);
    }
  }
  for (int j = 0; j < NT; ++j) out[j] = hsum(acc[j]) - hsum128(macc[j]);
}

template <bool FIVE>
float fused_k4(const uint8_t* row, const Act& a, int64_t in) {
  float out;
  fused_k4_n<FIVE, 1>(row, &a, in, &out);
  return out;
}

float fused_q3_k(const uint8_t* row, const Act& a, int64_t in) {  // d * (sc_g - 32) * (low + 4 h - 4)
  __m256 acc = _mm256_setzero_ps();
  const __m256i three = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
  for (int64_t k = 0; k < in / 256; ++k) {
    const uint8_t* b = row + k * 110;
    _mm_prefetch(reinterpret_cast<const char*>(b + kPrefetch), _MM_HINT_T0);
    const __m256i sv = _mm256_sub_epi16(_mm256_cvtepu8_epi16(q3_scale_bytes(b + 96)), _mm256_set1_epi16(32));
    const Scales16 scales(sv);
    const float d = f16(b + 108);
    const __m256i hm = load32(b);
    const int8_t* aq = a.q + 256 * k;
    __m256i isum = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const __m256i v = load32(b + 32 + 32 * h);
      for (int j = 0; j < 4; ++j) {
        const int sub = 4 * h + j;  // weights 32 sub..: low bits 2j of byte 32h + l, high bit `sub` of hmask[l]
        const __m256i hb = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hm, sub), one), 2);
        const __m256i q = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 2 * j), three), hb);
        isum = _mm256_add_epi32(isum, dot_scaled(q, aq + 32 * sub, scales.sub(sub)));
      }
    }
    // the -4 offset: 4 sc_g per weight, against the per-16 sums, in the same int32 sum
    isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(min_dot16(sv, a.bs + 16 * k), 2));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(d * a.d8[64 * k]), acc);
  }
  return hsum(acc);
}

float fused_q6_k(const uint8_t* row, const Act& a, int64_t in) {  // d * sc_g * (n - 32), n = 4 low bits | 2 high << 4
  __m256 acc = _mm256_setzero_ps();
  const __m256i three = _mm256_set1_epi8(3);
  for (int64_t k = 0; k < in / 256; ++k) {
    const uint8_t* b = row + k * 210;
    _mm_prefetch(reinterpret_cast<const char*>(b + kPrefetch), _MM_HINT_T0);
    const __m256i sv = _mm256_cvtepi8_epi16(load16(b + 192));
    const Scales16 scales(sv);
    const float d = f16(b + 208);
    const int8_t* aq = a.q + 256 * k;
    __m256i isum = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const __m256i l0 = load32(b + 64 * h), l1 = load32(b + 64 * h + 32), hv = load32(b + 128 + 32 * h);
      const __m256i low[4] = {lo_nib(l0), lo_nib(l1), hi_nib(l0), hi_nib(l1)};
      for (int s = 0; s < 4; ++s) {
        const int sub = 4 * h + s;  // weights 32 sub.., groups 2 sub and 2 sub + 1
        const __m256i q = _mm256_or_si256(low[s], _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hv, 2 * s), three), 4));
        isum = _mm256_add_epi32(isum, dot_scaled(q, aq + 32 * sub, scales.sub(sub)));
      }
    }
    // the -32 offset: 32 sc_g per weight, against the per-16 sums, in the same int32 sum
    isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(min_dot16(sv, a.bs + 16 * k), 5));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(d * a.d8[64 * k]), acc);
  }
  return hsum(acc);
}

// NT tokens at once, as fused_k4_n: out[j] is token j's one-token sum, bit for bit.
template <int NT>
KI void fused_q2_k_n(const uint8_t* row, const Act* a, int64_t in, float* out) {  // d * (sc & 15) * q - dmin * (sc >> 4)
  __m256 acc[NT], macc[NT];
  for (int j = 0; j < NT; ++j) acc[j] = macc[j] = _mm256_setzero_ps();
  const __m256i three = _mm256_set1_epi8(3);
  for (int64_t k = 0; k < in / 256; ++k) {
    const uint8_t* b = row + k * 84;
    _mm_prefetch(reinterpret_cast<const char*>(b + kPrefetch), _MM_HINT_T0);
    const __m128i sb = load16(b);  // per 16: scale (low nibble) and minimum (high nibble)
    const Scales16 scales(_mm256_cvtepu8_epi16(_mm_and_si128(sb, _mm_set1_epi8(15))));
    __m256i isum[NT];
    for (int j = 0; j < NT; ++j) isum[j] = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const __m256i v = load32(b + 16 + 32 * h);
      for (int s = 0; s < 4; ++s) {
        const int sub = 4 * h + s;
        const __m256i q = _mm256_and_si256(_mm256_srli_epi16(v, 2 * s), three);
        const __m256i sc = scales.sub(sub);
        for (int j = 0; j < NT; ++j) isum[j] = _mm256_add_epi32(isum[j], dot_scaled(q, a[j].q + 256 * k + 32 * sub, sc));
      }
    }
    const __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sb, 4), _mm_set1_epi8(15)));
    for (int j = 0; j < NT; ++j) {
      const float da = a[j].d8[64 * k];
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[j]), _mm256_set1_ps(f16(b + 80) * da), acc[j]);
      macc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(min_dot16(mins, a[j].bs + 16 * k)), _mm256_set1_ps(f16(b + 82) * da),
                                macc[j]);
    }
  }
  for (int j = 0; j < NT; ++j) out[j] = hsum(acc[j]) - hsum(macc[j]);
}

float fused_q2_k(const uint8_t* row, const Act& a, int64_t in) {
  float out;
  fused_q2_k_n<1>(row, &a, in, &out);
  return out;
}

// IQ2_XXS in registers: per 32 weights, four 8-byte grid rows (unsigned magnitudes) side by side; their signs go
// onto the activations instead (sign_epi8), so the codes meet them unsigned in one dpbusd / maddubs.
KI uint64_t u64(const void* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
KI __m256i grid4x8(const int8_t (*grid)[8], const uint8_t* idx) {
  return _mm256_set_epi64x(static_cast<int64_t>(u64(grid[idx[3]])), static_cast<int64_t>(u64(grid[idx[2]])),
                           static_cast<int64_t>(u64(grid[idx[1]])), static_cast<int64_t>(u64(grid[idx[0]])));
}
KI __m256i ksigns4(uint32_t aux) {  // four 7-bit sign indices -> 32 factors +-1
  const auto f = [&](int k) { return static_cast<int64_t>(g_ksign_factors[(aux >> (7 * k)) & 127]); };
  return _mm256_set_epi64x(f(3), f(2), f(1), f(0));
}
// The IQ types against activations per 256 (Q8_K), as the K-quants: each 32's integer dot times its integer scale
// (2 ls + 1 and the like) in int32 (madd on the int16 pairs), summed over the super-block, one float multiply-add.
KI __m256i dot32u_sc(__m256i q, __m256i a, __m256i sc16) {  // q in 0..127; int32 lanes 0-3: weights 0..15, 4-7: 16..31
  return _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), sc16);
}
KI __m256i dot32_sc(__m256i q, __m256i a, __m256i sc16) {  // q signed
  return dot32u_sc(_mm256_sign_epi8(q, q), _mm256_sign_epi8(a, q), sc16);
}
KI __m256i odd16(int ls) { return _mm256_set1_epi16(static_cast<int16_t>(2 * ls + 1)); }
KI void fma_block(__m256i s0, __m256i s1, float f, __m256& acc) {  // acc += (s0 + s1) * f
  acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1)), _mm256_set1_ps(f), acc);
}

float fused_iq2_xxs(const uint8_t* row, const Act& a, int64_t in) {  // d * (2 ls + 1) / 8 * grid * sign
  __m256 acc = _mm256_setzero_ps();
  for (int64_t k = 0; k < in / 256; ++k) {
    const uint8_t* b = row + k * 66;
    _mm_prefetch(reinterpret_cast<const char*>(b + kPrefetch), _MM_HINT_T0);
    __m256i is[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int l = 0; l < 8; ++l) {
      const uint8_t* g = b + 2 + 8 * l;
      const uint32_t aux = u32(g + 4);
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + 256 * k + 32 * l));
      is[l & 1] = _mm256_add_epi32(
          is[l & 1], dot32u_sc(grid4x8(g_tab.iq2xxs, g), _mm256_sign_epi8(av, ksigns4(aux)), odd16(aux >> 28)));
    }
    fma_block(is[0], is[1], f16(b) * 0.125f * a.d8[64 * k], acc);
  }
  return hsum(acc);
}

// IQ2_XS: per 8 weights a 9-bit grid index and a 7-bit sign index in one u16, 4-bit scales per 16.
float fused_iq2_xs(const uint8_t* row, const Act& a, int64_t in) {  // d * (2 sc + 1) / 8 * grid * sign
  __m256 acc = _mm256_setzero_ps();
  for (int64_t k = 0; k < in / 256; ++k) {
    const uint8_t* b = row + k * 74;
    _mm_prefetch(reinterpret_cast<const char*>(b + kPrefetch), _MM_HINT_T0);
    const __m128i s8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 66));  // group 2l: low nibble of byte l
    const __m256i s16 = _mm256_cvtepu8_epi16(
        _mm_unpacklo_epi8(_mm_and_si128(s8, _mm_set1_epi8(15)), _mm_and_si128(_mm_srli_epi16(s8, 4), _mm_set1_epi8(15))));
    const Scales16 scales(_mm256_add_epi16(_mm256_slli_epi16(s16, 1), _mm256_set1_epi16(1)));  // 2 sc + 1
    __m256i is[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int l = 0; l < 8; ++l) {
      unsigned v[4];
      for (int j = 0; j < 4; ++j) v[j] = u16(b + 2 + 8 * l + 2 * j);
      const auto g = [&](int j) { return static_cast<int64_t>(u64(g_tab.iq2xs[v[j] & 511])); };
      const auto f = [&](int j) { return static_cast<int64_t>(g_ksign_factors[v[j] >> 9]); };
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + 256 * k + 32 * l));
      is[l & 1] = _mm256_add_epi32(is[l & 1], dot32u_sc(_mm256_set_epi64x(g(3), g(2), g(1), g(0)),
                                                        _mm256_sign_epi8(av, _mm256_set_epi64x(f(3), f(2), f(1), f(0))),
                                                        scales.sub(l)));
    }
    fma_block(is[0], is[1], f16(b) * 0.125f * a.d8[64 * k], acc);
  }
  return hsum(acc);
}

// IQ3_XXS: per 32 weights eight 4-byte grid rows (one byte index each) and four 7-bit sign indices.
float fused_iq3_xxs(const uint8_t* row, const Act& a, int64_t in) {  // d * (2 ls + 1) / 4 * grid * sign
  __m256 acc = _mm256_setzero_ps();
  for (int64_t k = 0; k < in / 256; ++k) {
    const uint8_t* b = row + k * 98;
    _mm_prefetch(reinterpret_cast<const char*>(b + kPrefetch), _MM_HINT_T0);
    __m256i is[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int l = 0; l < 8; ++l) {
      const uint8_t* idx = b + 2 + 8 * l;
      const uint32_t aux = u32(b + 66 + 4 * l);
      const auto g = [&](int j) {
        int v;
        std::memcpy(&v, g_tab.iq3xxs[idx[j]], 4);
        return v;
      };
      const __m256i q = _mm256_set_epi32(g(7), g(6), g(5), g(4), g(3), g(2), g(1), g(0));
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + 256 * k + 32 * l));
      is[l & 1] = _mm256_add_epi32(is[l & 1], dot32u_sc(q, _mm256_sign_epi8(av, ksigns4(aux)), odd16(aux >> 28)));
    }
    fma_block(is[0], is[1], f16(b) * 0.25f * a.d8[64 * k], acc);
  }
  return hsum(acc);
}

// IQ3_S: per 32 weights eight 4-byte grid rows (9-bit indices: a byte plus one bit of qh) and four 8-bit sign masks.
float fused_iq3_s(const uint8_t* row, const Act& a, int64_t in) {  // d * (1 + 2 sc) * grid * sign
  __m256 acc = _mm256_setzero_ps();
  for (int64_t k = 0; k < in / 256; ++k) {
    const uint8_t* b = row + k * 110;
    _mm_prefetch(reinterpret_cast<const char*>(b + kPrefetch), _MM_HINT_T0);
    __m256i is[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int l = 0; l < 8; ++l) {
      const uint8_t* idx = b + 2 + 8 * l;
      const unsigned qh = b[66 + l];
      const auto g = [&](int j) {
        int v;
        std::memcpy(&v, g_tab.iq3s[idx[j] | ((qh >> j) & 1) << 8], 4);
        return v;
      };
      const auto f = [&](int j) { return static_cast<int64_t>(u64(g_sign_factors[b[74 + 4 * l + j]])); };
      const __m256i q = _mm256_set_epi32(g(7), g(6), g(5), g(4), g(3), g(2), g(1), g(0));
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + 256 * k + 32 * l));
      is[l & 1] = _mm256_add_epi32(
          is[l & 1], dot32u_sc(q, _mm256_sign_epi8(av, _mm256_set_epi64x(f(3), f(2), f(1), f(0))),
                               odd16((b[106 + l / 2] >> (4 * (l % 2))) & 15)));
    }
    fma_block(is[0], is[1], f16(b) * a.d8[64 * k], acc);
  }
  return hsum(acc);
}

// IQ1_S / IQ1_M in registers: four 8-byte rows of 8 * grid side by side, plus their +-1 offsets, against the token.
KI __m256i iq1_grid(int i0, int i1, int i2, int i3) {  // four 8-byte rows of 8 * grid
  const auto r = [](int i) { return static_cast<int64_t>(u64(g_iq1s8[i])); };
  return _mm256_set_epi64x(r(i3), r(i2), r(i1), r(i0));
}
#if defined(__BMI2__)
constexpr uint64_t kIdxHi = 0x0700070007000700ULL;  // bits 8-10 of each u16 lane: an index's top three bits
constexpr uint64_t kNibbleHi = 0x0f000f000f000f00ULL;  // a nibble per lane at bits 8-11 (its top bit masked off)
KI __m256i iq1_grid4(uint64_t idx) {  // four u16 indices -> iq1_grid
  return iq1_grid(static_cast<int>(idx & 0xffff), static_cast<int>(idx >> 16 & 0xffff),
                  static_cast<int>(idx >> 32 & 0xffff), static_cast<int>(idx >> 48));
}
#endif
float fused_iq1_s(const uint8_t* row, const Act& a, int64_t in) {  // d * (2 ls + 1) / 8 * (8 grid +- 1)
  __m256 acc = _mm256_setzero_ps();
  for (int64_t k = 0; k < in / 256; ++k) {
    const uint8_t* b = row + k * 50;
    _mm_prefetch(reinterpret_cast<const char*>(b + kPrefetch), _MM_HINT_T0);
    __m256i is[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int l = 0; l < 8; ++l) {
      const unsigned qh = u16(b + 34 + 2 * l);
      const int sgn = (qh & 0x8000) ? -1 : 1;
      const uint8_t* qs = b + 2 + 4 * l;
#if defined(__BMI2__)  // the four 11-bit indices as u16 lanes in two deposits (fast BMI2: the AVX-512 build's CPUs)
      const __m256i g = iq1_grid4(_pdep_u64(u32(qs), 0x00ff00ff00ff00ffULL) | _pdep_u64(qh & 0xfff, kIdxHi));
#else
      const __m256i g = iq1_grid(qs[0] | (qh & 7) << 8, qs[1] | ((qh >> 3) & 7) << 8, qs[2] | ((qh >> 6) & 7) << 8,
                                 qs[3] | ((qh >> 9) & 7) << 8);
#endif
      const __m256i q = _mm256_add_epi8(g, _mm256_set1_epi8(static_cast<char>(sgn)));
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + 256 * k + 32 * l));
      is[l & 1] = _mm256_add_epi32(is[l & 1], dot32_sc(q, av, odd16((qh >> 12) & 7)));
    }
    fma_block(is[0], is[1], f16(b) * 0.125f * a.d8[64 * k], acc);
  }
  return hsum(acc);
}
// IQ1_M's 16 3-bit scales (group g: bits 3 (g % 4) of u16 g / 4; the top 4 bits of each u16 are the block
// scale's) -> int16 lanes 2 s + 1: each u16 spread to its 4 lanes, shifted up by 13 - 3 (g % 4) (a multiply), down 13
KI __m256i iq1m_scales(const uint8_t* s8) {
#define S4(j) 2 * (j), 2 * (j) + 1, 2 * (j), 2 * (j) + 1, 2 * (j), 2 * (j) + 1, 2 * (j), 2 * (j) + 1
  alignas(32) static constexpr int8_t kSpread[32] = {S4(0), S4(1), S4(2), S4(3)};
#undef S4
  alignas(32) static constexpr int16_t kUp[16] = {8192, 1024, 128, 16, 8192, 1024, 128, 16,
                                                  8192, 1024, 128, 16, 8192, 1024, 128, 16};
  const __m256i u = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(s8))),
                                        _mm256_load_si256(reinterpret_cast<const __m256i*>(kSpread)));
  const __m256i s3 = _mm256_srli_epi16(_mm256_mullo_epi16(u, _mm256_load_si256(reinterpret_cast<const __m256i*>(kUp))), 13);
  return _mm256_add_epi16(_mm256_slli_epi16(s3, 1), _mm256_set1_epi16(1));
}
float fused_iq1_m(const uint8_t* row, const Act& a, int64_t in) {  // scales per 16, offsets per 8
  __m256 acc = _mm256_setzero_ps();
  for (int64_t k = 0; k < in / 256; ++k) {
    const uint8_t* b = row + k * 56;
    _mm_prefetch(reinterpret_cast<const char*>(b + kPrefetch), _MM_HINT_T0);
    unsigned s4[4];
    unsigned dbits = 0;
    for (int j = 0; j < 4; ++j) {
      s4[j] = u16(b + 48 + 2 * j);
      dbits |= (s4[j] >> 12) << (4 * j);
    }
    const Scales16 scales(iq1m_scales(b + 48));
    __m256i is[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int l = 0; l < 8; ++l) {
#if defined(__BMI2__)  // entries 4l .. 4l + 3: per nibble of qh 3 index bits, then the offset's sign
      const unsigned qh = u16(b + 32 + 2 * l);
      const __m256i q = _mm256_add_epi8(
          iq1_grid4(_pdep_u64(u32(b + 4 * l), 0x00ff00ff00ff00ffULL) | _pdep_u64(qh & 0x7777, kNibbleHi)),
          _mm256_load_si256(reinterpret_cast<const __m256i*>(g_iq1m_offsets[_pext_u32(qh, 0x8888)])));
#else
      const uint8_t h0 = b[32 + 2 * l], h1 = b[33 + 2 * l];  // entries 4l .. 4l + 3: 3 index bits + offset sign
      const __m256i q = _mm256_add_epi8(
          iq1_grid(b[4 * l] | (h0 & 7) << 8, b[4 * l + 1] | ((h0 >> 4) & 7) << 8, b[4 * l + 2] | (h1 & 7) << 8,
                   b[4 * l + 3] | ((h1 >> 4) & 7) << 8),
          _mm256_load_si256(reinterpret_cast<const __m256i*>(g_iq1m_offsets[(h0 >> 3 & 1) | (h0 >> 6 & 2) |
                                                                               (h1 >> 1 & 4) | (h1 >> 4 & 8)])));
#endif
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + 256 * k + 32 * l));
      is[l & 1] = _mm256_add_epi32(is[l & 1], dot32_sc(q, av, scales.sub(l)));
    }
    fma_block(is[0], is[1], _cvtsh_ss(static_cast<uint16_t>(dbits)) * 0.125f * a.d8[64 * k], acc);
  }
  return hsum(acc);
}

// IQ4_XS: per 32 weights 16 bytes of nibble planes through the IQ4_NL table (one shuffle), a 6-bit scale - 32.
float fused_iq4_xs(const uint8_t* row, const Act& a, int64_t in) {  // d * (ls - 32) * iq4nl[nibble]
  const __m256i tab = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g_tab.iq4nl)));
  __m256 acc = _mm256_setzero_ps();
  for (int64_t k = 0; k < in / 256; ++k) {
    const uint8_t* b = row + k * 136;
    _mm_prefetch(reinterpret_cast<const char*>(b + kPrefetch), _MM_HINT_T0);
    const unsigned sh = u16(b + 2);
    __m256i is[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int l = 0; l < 8; ++l) {  // low nibbles are weights 0..15 of the 32, high ones 16..31
      const __m128i v = load16(b + 8 + 16 * l);
      const __m256i q = _mm256_shuffle_epi8(tab, _mm256_set_m128i(hi_nib(v), lo_nib(v)));
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + 256 * k + 32 * l));
      const int ls = (((b[4 + l / 2] >> (4 * (l % 2))) & 15) | ((sh >> (2 * l)) & 3) << 4) - 32;
      is[l & 1] = _mm256_add_epi32(is[l & 1], dot32_sc(q, av, _mm256_set1_epi16(static_cast<int16_t>(ls))));
    }
    fma_block(is[0], is[1], f16(b) * a.d8[64 * k], acc);
  }
  return hsum(acc);
}

using FusedRow = float (*)(const uint8_t*, const Act&, int64_t);
// A tile's rows through one row function, inlined into the loop (a decode step's down projections have rows of 2
// super-blocks: a call and its setup per row cost as much as a tenth of the row's work)
template <FusedRow FN>
void fused_rows_of(const uint8_t* w, int64_t row_bytes, int64_t r0, int n, const Act& a, int64_t in, float* y) {
  for (int r = 0; r < n; ++r) y[r0 + r] = FN(w + (r0 + r) * row_bytes, a, in);
}
using FusedTile = void (*)(const uint8_t*, int64_t, int64_t, int, const Act&, int64_t, float*);
#define FUSED(dec, block, bytes, min, uns) fused_rows_of<fused_block_row<dec, block, bytes, min, uns>>
#define REG(fn) fused_rows_of<fn> /* registers */
const FusedTile kFusedTiles[NTYPES] = {
    fused_tile<Q4_0>,                       FUSED(dec_q4_1, 32, 20, true, true),    FUSED(dec_q5_0, 32, 22, false, false),
    FUSED(dec_q5_1, 32, 24, true, true),    fused_tile<Q8_0>,                       FUSED(dec_iq4_nl, 32, 18, false, false),
    FUSED(dec_mxfp4, 32, 17, false, false), REG(fused_q2_k),                        REG(fused_q3_k),
    REG(fused_k4<false>),                   REG(fused_k4<true>),                    REG(fused_q6_k),
    FUSED(dec_tq1_0, 256, 54, true, true),  FUSED(dec_tq2_0, 256, 66, true, true),  REG(fused_iq1_s),
    REG(fused_iq1_m),                       REG(fused_iq2_xxs),                     REG(fused_iq2_xs),
    FUSED(dec_iq2_s, 256, 82, false, false), REG(fused_iq3_xxs),                    REG(fused_iq3_s),
    REG(fused_iq4_xs),
};
#undef REG
#undef FUSED

// ---- one matmul: y[t, row] for rows [r0, r1) of a weight, every token of an activation set ------------------------

struct Scratch {  // per thread: kR decoded rows
  int8_t* q = nullptr;
  float* sc8 = nullptr;
  float* mn = nullptr;
  int64_t in = 0;
  bool alloc(int64_t width) {
    if (width <= in) return true;
    std::free(q);
    std::free(sc8);
    std::free(mn);
    q = static_cast<int8_t*>(std::aligned_alloc(64, kR * width));
    sc8 = static_cast<float*>(std::aligned_alloc(64, kR * (width / 32) * 8 * sizeof(float)));
    mn = static_cast<float*>(std::aligned_alloc(64, kR * (width / 16) * sizeof(float) + 64));
    in = (q && sc8 && mn) ? width : 0;
    return in != 0;
  }
  ~Scratch() {
    std::free(q);
    std::free(sc8);
    std::free(mn);
  }
};

struct ActSet {  // T quantized tokens of width `in`, scales per `block`
  int8_t* q;
  float* d8;
  float* s16;
  int16_t* bs;
  int64_t in;
  int block;
  Act at(int64_t t) const { return Act{q + t * in, d8 + t * (in / 32) * 8, s16 + t * (in / 16), bs + t * (in / 16), block}; }
  ActSet from(int64_t t) const {
    return ActSet{q + t * in, d8 + t * (in / 32) * 8, s16 + t * (in / 16), bs + t * (in / 16), in, block};
  }
  void quantize(int64_t t, const float* x) const {  // token t = x [in]
    quantize_act(x, in, q + t * in, d8 + t * (in / 32) * 8, s16 + t * (in / 16), bs + t * (in / 16), block);
  }
};

struct ActBuf {
  ActSet set{nullptr, nullptr, nullptr, nullptr, 0, 32};
  // `block`: act_block of the weight type the tokens meet
  bool alloc(int64_t T, int64_t in, int block) {
    set.in = in;
    set.block = block;
    set.q = static_cast<int8_t*>(std::malloc(std::max<int64_t>(T * in, 1)));
    set.d8 = static_cast<float*>(std::malloc(std::max<int64_t>(T * (in / 32) * 8, 1) * sizeof(float)));
    set.s16 = static_cast<float*>(std::malloc(std::max<int64_t>(T * (in / 16), 1) * sizeof(float)));
    set.bs = static_cast<int16_t*>(std::malloc(std::max<int64_t>(T * (in / 16), 1) * sizeof(int16_t) + 32));
    return set.q && set.d8 && set.s16 && set.bs;
  }
  ~ActBuf() {
    std::free(set.q);
    std::free(set.d8);
    std::free(set.s16);
    std::free(set.bs);
  }
};

// Rows [r0, r0 + n) of a type with an NT-token register path (K::run<NT>: Q4_K, Q5_K, Q2_K) against T tokens,
// four at a time and the last 1-3 in one pass (each row read once per pass, from L1 after the first);
// y[t * y_stride + row].
template <class K>
void multi_token_rows(const uint8_t* w, int64_t row_bytes, int64_t r0, int n, const ActSet& acts, int64_t T,
                      const int64_t* toks, float* y, int64_t y_stride) {
  constexpr int NT = 4;
  for (int r = 0; r < n; ++r) {
    const uint8_t* row = w + (r0 + r) * row_bytes;
    int64_t t = 0;
    Act a[NT];
    float o[NT];
    for (; t + NT <= T; t += NT) {
      for (int j = 0; j < NT; ++j) a[j] = acts.at(toks ? toks[t + j] : t + j);
      K::template run<NT>(row, a, acts.in, o);
      for (int j = 0; j < NT; ++j) y[(t + j) * y_stride + r0 + r] = o[j];
    }
    const int left = static_cast<int>(T - t);  // 0..3: one pass for them too
    for (int j = 0; j < left; ++j) a[j] = acts.at(toks ? toks[t + j] : t + j);
    if (left == 3) K::template run<3>(row, a, acts.in, o);
    if (left == 2) K::template run<2>(row, a, acts.in, o);
    if (left == 1) K::template run<1>(row, a, acts.in, o);
    for (int j = 0; j < left; ++j) y[(t + j) * y_stride + r0 + r] = o[j];
  }
}
template <bool FIVE>
struct K4Rows {
  template <int NT>
  static void run(const uint8_t* row, const Act* a, int64_t in, float* out) { fused_k4_n<FIVE, NT>(row, a, in, out); }
};
struct Q2Rows {
  template <int NT>
  static void run(const uint8_t* row, const Act* a, int64_t in, float* out) { fused_q2_k_n<NT>(row, a, in, out); }
};

// Up to how many tokens a tile runs the type's one-token register path once per token, its rows staying in L1
// (more: rows decoded once into int8, then dotted with each token), for the types without an NT-token path
// (multi_token_rows). Measured on K2.5's expert shape (benchmarks/ggml_vs_ours.py, Zen 4, AVX-512 VNNI) at a few
// tokens, a prefill's expert batches: Q6_K at 4 tokens 5.8 -> 7.3-10.2 GB/s; Q8_0 and IQ4_XS win at a few;
// Q4_0, Q3_K and the other i-quants lose from 2 tokens on.
KI int64_t fused_tokens(int type) {
  switch (type) {
    case Q6_K: return 16;
    case Q8_0: return 8;
    case IQ4_XS: return 2;
    default: return 1;
  }
}

// Rows [r0, r0 + n) (n <= kR) of weight `w` (`type`, `row_bytes` apart) times tokens `toks` (or 0..T-1 when null)
// of `acts`; y[t * y_stride + row].
void tile(int type, const uint8_t* w, int64_t row_bytes, int64_t r0, int n, const ActSet& acts, int64_t T,
          const int64_t* toks, float* y, int64_t y_stride, Scratch& s) {
  const int64_t in = acts.in;
  // Q4_K / Q5_K / Q2_K at several tokens: four tokens per pass of each row's codes (K2.5's gate shape, Q4_K at 32
  // tokens 1.05 -> 1.49 GB/s, at 128 0.27 -> 0.39; Q5_K 1.13 -> 2.07 and 0.36 -> 0.46; Q2_K at 4 tokens 5.0 -> 9.7,
  // at 32 0.66 -> 1.20, at 128 0.17 -> 0.26; ggml's 2.9-3.3 and 0.9 for Q4_K)
  if ((type == Q4_K || type == Q5_K || type == Q2_K) && T > 1 && acts.block == act_block(type)) {
    const auto rows = type == Q4_K ? multi_token_rows<K4Rows<false>>
                      : type == Q5_K ? multi_token_rows<K4Rows<true>>
                                     : multi_token_rows<Q2Rows>;
    rows(w, row_bytes, r0, n, acts, T, toks, y, y_stride);
    return;
  }
  if (T <= fused_tokens(type) && acts.block == act_block(type)) {  // registers, token by token (rows stay in L1)
    for (int64_t t = 0; t < T; ++t)
      kFusedTiles[type](w, row_bytes, r0, n, acts.at(toks ? toks[t] : t), in, y + t * y_stride);
    return;
  }
  Rows rows[kR];
  for (int r = 0; r < kR; ++r) {
    rows[r] = Rows{s.q + r * in, s.sc8 + r * (in / 32) * 8, s.mn + r * (in / 16), in};
    if (r < n) decode_row(type, w + (r0 + r) * row_bytes, in, rows[r].q, rows[r].sc8, rows[r].mn);
  }
  const bool has_min = kTypes[type].has_min;
  float res[kR];
  for (int64_t t = 0; t < T; ++t) {
    const Act a = acts.at(toks ? toks[t] : t);
    if (kTypes[type].uns) {
      if (n == kR) {
        dot_rows<kR, true>(rows, a, has_min, res);
      } else {
        for (int r = 0; r < n; ++r) dot_rows<1, true>(rows + r, a, has_min, res + r);
      }
    } else if (n == kR) {
      dot_rows<kR, false>(rows, a, has_min, res);
    } else {
      for (int r = 0; r < n; ++r) dot_rows<1, false>(rows + r, a, has_min, res + r);
    }
    for (int r = 0; r < n; ++r) y[t * y_stride + r0 + r] = res[r];
  }
}

KI float silu(float g) { return g / (1.0f + std::exp(-g)); }

int64_t row_bytes_of(int type, int64_t in) { return in / kTypes[type].block * kTypes[type].bytes; }

bool valid(int type, int64_t in) {
  return type >= 0 && type < NTYPES && in > 0 && in % kTypes[type].block == 0 && in % 32 == 0;
}

}  // namespace

extern "C" {

// The type's index by tag ("q4_k"), or -1.
int kimi_ggml_type_id(const char* name) {
  for (int i = 0; i < NTYPES; ++i)
    if (std::strcmp(kTypes[i].name, name) == 0) return i;
  return -1;
}

// 1 when this build computes with AVX-512 VNNI, 0 for AVX2.
int kimi_ggml_isa() {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
  return 1;
#else
  return 0;
#endif
}

// Tables in ggml-common.h's layout (grids as int8 values).
void kimi_ggml_set_tables(const int8_t* iq1s, const int8_t* iq2xxs, const int8_t* iq2xs, const int8_t* iq2s,
                          const int8_t* iq3xxs, const int8_t* iq3s, const uint8_t* ksigns, const int8_t* iq4nl,
                          const int8_t* mxfp4) {
  std::memcpy(g_tab.iq1s, iq1s, sizeof g_tab.iq1s);
  std::memcpy(g_tab.iq2xxs, iq2xxs, sizeof g_tab.iq2xxs);
  std::memcpy(g_tab.iq2xs, iq2xs, sizeof g_tab.iq2xs);
  std::memcpy(g_tab.iq2s, iq2s, sizeof g_tab.iq2s);
  std::memcpy(g_tab.iq3xxs, iq3xxs, sizeof g_tab.iq3xxs);
  std::memcpy(g_tab.iq3s, iq3s, sizeof g_tab.iq3s);
  std::memcpy(g_tab.ksigns, ksigns, sizeof g_tab.ksigns);
  std::memcpy(g_tab.iq4nl, iq4nl, sizeof g_tab.iq4nl);
  std::memcpy(g_tab.mxfp4, mxfp4, sizeof g_tab.mxfp4);
  for (int i = 0; i < 2048; ++i)
    for (int j = 0; j < 8; ++j) g_iq1s8[i][j] = static_cast<int8_t>(8 * g_tab.iq1s[i][j]);
  for (int i = 0; i < 256; ++i)
    for (int j = 0; j < 8; ++j) g_sign_factors[i][j] = static_cast<int8_t>((i >> j) & 1 ? -1 : 1);
  for (int i = 0; i < 128; ++i) std::memcpy(&g_ksign_factors[i], g_sign_factors[g_tab.ksigns[i]], 8);
  for (int m = 0; m < 16; ++m)
    for (int j = 0; j < 32; ++j) g_iq1m_offsets[m][j] = static_cast<int8_t>((m >> (j / 8)) & 1 ? -1 : 1);
  g_tables_set = true;
}

// Decode `rows` rows into the common form, as float32 w = scale * q - min: [rows, in] (tests check the decoders
// against the reference dequantization with it). Returns 0, or 2 for a bad type / width, 3 without tables.
int kimi_ggml_decode(const uint8_t* w, int type, int64_t rows, int64_t in, float* out) {
  if (!valid(type, in)) return 2;
  if (!g_tables_set) return 3;
  const int64_t rb = row_bytes_of(type, in);
  int8_t* q = static_cast<int8_t*>(std::malloc(in));
  float* sc8 = static_cast<float*>(std::malloc((in / 32) * 8 * sizeof(float)));
  float* mn = static_cast<float*>(std::calloc(in / 16, sizeof(float)));
  if (!q || !sc8 || !mn) return 1;
  for (int64_t r = 0; r < rows; ++r) {
    decode_row(type, w + r * rb, in, q, sc8, mn);
    for (int64_t i = 0; i < in; ++i) out[r * in + i] = sc8[(i / 16) * 4] * static_cast<float>(q[i]) - mn[i / 16];
  }
  std::free(q);
  std::free(sc8);
  std::free(mn);
  return 0;
}

// y [T, out] = x [T, in] @ W.T, W `type` [out, in] (row_bytes apart, contiguous). Returns 0, 1 (no memory), 2, 3.
int kimi_ggml_linear(const float* x, int64_t T, int64_t in, const uint8_t* w, int type, int64_t out, float* y,
                     int n_threads) {
  if (!valid(type, in)) return 2;
  if (!g_tables_set) return 3;
  ActBuf act;
  if (!act.alloc(T, in, act_block(type))) return 1;
  const int64_t rb = row_bytes_of(type, in);
  const int64_t tiles = (out + kR - 1) / kR;
  int failed = 0;
#pragma omp parallel num_threads(n_threads)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; ++t) act.set.quantize(t, x + t * in);
    Scratch s;
    if (!s.alloc(in)) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp barrier
    if (!failed) {
#pragma omp for schedule(static)  // contiguous halves: each thread streams its rows
      for (int64_t k = 0; k < tiles; ++k) {
        const int64_t r0 = k * kR;
        tile(type, w, rb, r0, static_cast<int>(std::min<int64_t>(kR, out - r0)), act.set, T, nullptr, y, out, s);
      }
    }
  }
  return failed;
}

// Batched: y [H, T, out] = x [H, T, in] @ W_h.T for H weights stored one after another ([H * out, in] rows of
// `type`): MLA's absorbed per-head matrices in one call. Returns 0, 1 (no memory), 2, 3.
int kimi_ggml_linear_batched(const float* x, int64_t H, int64_t T, int64_t in, const uint8_t* w, int type,
                             int64_t out, float* y, int n_threads) {
  if (!valid(type, in)) return 2;
  if (!g_tables_set) return 3;
  ActBuf act;
  if (!act.alloc(H * T, in, act_block(type))) return 1;
  const int64_t rb = row_bytes_of(type, in);
  const int64_t tiles = (out + kR - 1) / kR;
  int failed = 0;
#pragma omp parallel num_threads(n_threads)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < H * T; ++t) act.set.quantize(t, x + t * in);
    Scratch s;
    if (!s.alloc(in)) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp barrier
    if (!failed) {
#pragma omp for schedule(static)
      for (int64_t k = 0; k < H * tiles; ++k) {
        const int64_t h = k / tiles, r0 = (k % tiles) * kR;
        tile(type, w + h * out * rb, rb, r0, static_cast<int>(std::min<int64_t>(kR, out - r0)), act.set.from(h * T), T,
             nullptr,
             y + h * T * out, out, s);
      }
    }
  }
  return failed;
}

// One MoE layer's CPU experts: out [T, D] = sum over the (token, k) pairs of the listed experts of
// weight * down(silu(gate x) * up x). Experts e = 0..E-1: ptrs[3e + 0..2] = gate [I, D], up [I, D], down [D, I]
// rows of types types[0..2]; its pairs are tokens[begin[e]:end[e]] with weights wts[...] (sorted by expert).
int kimi_ggml_moe(const float* x, int64_t T, int64_t D, int64_t I, int64_t E, const int64_t* ptrs, const int* types,
                  const int64_t* begin, const int64_t* end, const int64_t* tokens, const float* wts, float* out,
                  int n_threads) {
  if (!valid(types[0], D) || !valid(types[1], D) || !valid(types[2], I)) return 2;
  if (!g_tables_set) return 3;
  const int64_t P = E ? end[E - 1] - begin[0] : 0;  // pairs
  const int64_t p0 = E ? begin[0] : 0;
  ActBuf ax, axu, ah;  // x for gate (and for up when its block is the same), x for up otherwise, silu(g) * u
  const bool one_x = act_block(types[0]) == act_block(types[1]);
  float* gu = static_cast<float*>(std::malloc(std::max<int64_t>(P * 2 * I, 1) * sizeof(float)));  // [P, 2, I]
  float* yd = static_cast<float*>(std::malloc(std::max<int64_t>(P * D, 1) * sizeof(float)));      // [P, D]
  if (!ax.alloc(T, D, act_block(types[0])) || (!one_x && !axu.alloc(T, D, act_block(types[1]))) ||
      !ah.alloc(std::max<int64_t>(P, 1), I, act_block(types[2])) || !gu || !yd) {
    std::free(gu);
    std::free(yd);
    return 1;
  }
  const int64_t rb_g = row_bytes_of(types[0], D), rb_u = row_bytes_of(types[1], D), rb_d = row_bytes_of(types[2], I);
  const int64_t tiles_i = (I + kR - 1) / kR, tiles_d = (D + kR - 1) / kR;
  int failed = 0;
  // one token per expert (decode): contiguous shares, each thread streams its rows; else balance by work. The
  // schedule(runtime) loops below read this (the calling thread's setting, which torch's loops do not use).
  const bool even = P == E;
  omp_set_schedule(even ? omp_sched_static : omp_sched_dynamic, even ? 0 : 2);
#pragma omp parallel num_threads(n_threads)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; ++t) {
      ax.set.quantize(t, x + t * D);
      if (!one_x) axu.set.quantize(t, x + t * D);
    }
    const ActSet& xs_u = one_x ? ax.set : axu.set;
    Scratch s;
    if (!s.alloc(std::max(D, I))) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp barrier
    if (!failed) {
      // gate and up: item = (expert, projection, row tile); output gu[(p - p0) * 2I + proj * I + row]
      auto gate_up = [&](int64_t k) {
        const int64_t e = k / (2 * tiles_i), proj = (k / tiles_i) % 2, r0 = (k % tiles_i) * kR;
        const uint8_t* w = reinterpret_cast<const uint8_t*>(ptrs[3 * e + proj]);
        tile(types[proj], w, proj ? rb_u : rb_g, r0, static_cast<int>(std::min<int64_t>(kR, I - r0)),
             proj ? xs_u : ax.set, end[e] - begin[e], tokens + begin[e], gu + (begin[e] - p0) * 2 * I + proj * I, 2 * I, s);
      };
#pragma omp for schedule(runtime)  // set below: static when even, else dynamic
      for (int64_t k = 0; k < E * 2 * tiles_i; ++k) gate_up(k);
      // silu(gate) * up, quantized per pair
#pragma omp for schedule(static)
      for (int64_t p = 0; p < P; ++p) {
        float* g = gu + p * 2 * I;
        for (int64_t i = 0; i < I; ++i) g[i] = silu(g[i]) * g[I + i];
        ah.set.quantize(p, g);
      }
      // down: item = (expert, row tile); output yd[(p - p0) * D + row]
      auto down = [&](int64_t k) {
        const int64_t e = k / tiles_d, r0 = (k % tiles_d) * kR;
        const uint8_t* w = reinterpret_cast<const uint8_t*>(ptrs[3 * e + 2]);
        tile(types[2], w, rb_d, r0, static_cast<int>(std::min<int64_t>(kR, D - r0)), ah.set.from(begin[e] - p0),
             end[e] - begin[e],
             nullptr, yd + (begin[e] - p0) * D, D, s);
      };
#pragma omp for schedule(runtime)
      for (int64_t k = 0; k < E * tiles_d; ++k) down(k);
      // the weighted sum: each thread owns a range of columns, pairs in order
      const int nt = omp_get_num_threads(), me = omp_get_thread_num();
      const int64_t c0 = D * me / nt, c1 = D * (me + 1) / nt;
      for (int64_t t = 0; t < T; ++t) std::fill(out + t * D + c0, out + t * D + c1, 0.0f);
      for (int64_t p = 0; p < P; ++p) {
        const float wt = wts[p0 + p];
        float* o = out + tokens[p0 + p] * D;
        const float* yp = yd + p * D;
        for (int64_t c = c0; c < c1; ++c) o[c] += wt * yp[c];
      }
    }
  }
  std::free(gu);
  std::free(yd);
  return failed;
}

}  // extern "C"

#include "mla_cpu.h"  // one decode token's attention in one call, on the tiles above
#include "int4_q8.h"  // INT4 experts of the safetensors release, one decode token, int8 activations
#include "router_cpu.h"  // a MoE layer's routing for a few tokens in one call
#include "norm_row.h"   // a bf16 row's RMSNorm (norm_cpu.cpp's)
#include "layer_cpu.h"  // a decode token's layer in two calls, and the SwiGLU MLP in one
