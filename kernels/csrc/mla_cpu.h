// One decode token's Multi-head Latent Attention on the CPU in a single call (included by ggml_cpu.cpp, whose
// tiles and int8 activations it uses): the Linears in their ggml types with int8 activations, the norms, rope,
// the latent cache write, the absorbed per-head matrices (Q8_0) and the attention over the cached positions, in
// float32 between the steps (the torch path rounds to bf16 after each op and runs ~60 ops).
//
//   q      = q_b(rms(q_a(x)) * q_a_norm)               [H, nope + rope]   (q_b(x) without q_a)
//   latent = rms(kv_a(x)[:rank]) * kv_a_norm            [rank]     -> cache row `pos` (bf16 or f32)
//   k_pe   = rope(kv_a(x)[rank:])                       [rope]     -> cache row `pos`
//   q_lat  = uk_h @ q_nope_h                            [H, rank]
//   p      = softmax_s(scale * (q_lat_h . latent_s + rope(q_pe_h) . k_pe_s)),  s = 0 .. pos
//   out    = o(concat_h uv_h @ sum_s p_hs latent_s)     [D]
//
// Threads: one parallel region; the Linears split by row tiles, the attention by heads (each thread reads the
// cache once for its heads). One output element is computed by one thread in a fixed order: the result does not
// depend on the thread count.

struct MlaWeight {  // a ggml-typed [out, in] weight, rows contiguous
  const uint8_t* data;
  int32_t type;
  int32_t pad;
  int64_t out;
  int64_t in;
};

struct MlaArgs {
  MlaWeight q_a, q_b, kv_a, uk, uv, o;  // q_a.data null: the model has a plain q_proj (q_b reads x)
  const float* q_a_norm;                // [q_a.out] float32 (unused without q_a)
  const float* kv_a_norm;               // [rank]
  int64_t heads, nope, rope, v, rank;
  const float* cos;  // [rope / 2] for position `pos`
  const float* sin;
  int32_t interleaved;  // rope on pairs (x[2i], x[2i+1]) (Kimi), else on halves (x[i], x[i + rope/2])
  int32_t cache_bf16;   // cache rows are bf16 (else float32)
  float eps;            // the latent norms' eps
  float scale;          // softmax scale
  void* latent;         // this layer's cache: [max_tokens, rank]
  void* k_pe;           // [max_tokens, rope]
  int64_t pos;          // the token's position: cache rows 0 .. pos are attended to
};

namespace {

// n cache values (bf16 or float32) -> float32
KI void load_row(const void* row, bool bf16, int64_t n, float* out) {
  if (!bf16) {
    std::memcpy(out, row, n * sizeof(float));
    return;
  }
  const uint16_t* r = static_cast<const uint16_t*>(row);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, load_bf16x8(r + i));
  for (; i < n; ++i) out[i] = bf16_to_f(r[i]);
}

KI void store_row(void* row, bool bf16, int64_t n, const float* x) {
  if (!bf16) {
    std::memcpy(row, x, n * sizeof(float));
    return;
  }
  uint16_t* r = static_cast<uint16_t*>(row);
  for (int64_t i = 0; i < n; ++i) r[i] = f_to_bf16(x[i]);
}

KI float dot_f32(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  float t = hsum(_mm256_add_ps(s0, s1));
  for (; i < n; ++i) t += a[i] * b[i];
  return t;
}

KI void axpy_f32(float alpha, const float* x, float* y, int64_t n) {  // y += alpha * x
  const __m256 va = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += alpha * x[i];
}

// float vectors of the build's width, for the attention over the cache (compute-bound at long contexts: each cached
// row meets several heads while it is in registers)
#if defined(__AVX512F__)
using VF = __m512;
constexpr int kW = 16;
KI VF vload(const float* p) { return _mm512_loadu_ps(p); }
KI void vstore(float* p, VF v) { _mm512_storeu_ps(p, v); }
KI VF vfma(VF a, VF b, VF c) { return _mm512_fmadd_ps(a, b, c); }
KI VF vset1(float f) { return _mm512_set1_ps(f); }
KI VF vzero() { return _mm512_setzero_ps(); }
KI float vsum(VF v) { return _mm512_reduce_add_ps(v); }
#else
using VF = __m256;
constexpr int kW = 8;
KI VF vload(const float* p) { return _mm256_loadu_ps(p); }
KI void vstore(float* p, VF v) { _mm256_storeu_ps(p, v); }
KI VF vfma(VF a, VF b, VF c) { return _mm256_fmadd_ps(a, b, c); }
KI VF vset1(float f) { return _mm256_set1_ps(f); }
KI VF vzero() { return _mm256_setzero_ps(); }
KI float vsum(VF v) { return hsum(v); }
#endif

// out[i] = <q + i * n, row> for 4 consecutive vectors q (n a multiple of kW)
KI void dot4(const float* q, const float* row, int64_t n, float* out) {
  VF a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();
  for (int64_t c = 0; c < n; c += kW) {
    const VF r = vload(row + c);
    a0 = vfma(vload(q + c), r, a0);
    a1 = vfma(vload(q + n + c), r, a1);
    a2 = vfma(vload(q + 2 * n + c), r, a2);
    a3 = vfma(vload(q + 3 * n + c), r, a3);
  }
  out[0] = vsum(a0);
  out[1] = vsum(a1);
  out[2] = vsum(a2);
  out[3] = vsum(a3);
}

// <q, row> summed as dot4 sums each of its four (n a multiple of kW): a head's score does not depend on whether
// its thread took it in a group of 4 or alone, so the thread count does not change the result
KI float dot1(const float* q, const float* row, int64_t n) {
  VF a = vzero();
  for (int64_t c = 0; c < n; c += kW) a = vfma(vload(q + c), vload(row + c), a);
  return vsum(a);
}

// o + i * n += p[i * stride] * row for 4 consecutive vectors o (n a multiple of kW)
KI void axpy4(const float* p, int64_t stride, const float* row, int64_t n, float* o) {
  const VF p0 = vset1(p[0]), p1 = vset1(p[stride]), p2 = vset1(p[2 * stride]), p3 = vset1(p[3 * stride]);
  for (int64_t c = 0; c < n; c += kW) {
    const VF r = vload(row + c);
    vstore(o + c, vfma(p0, r, vload(o + c)));
    vstore(o + n + c, vfma(p1, r, vload(o + n + c)));
    vstore(o + 2 * n + c, vfma(p2, r, vload(o + 2 * n + c)));
    vstore(o + 3 * n + c, vfma(p3, r, vload(o + 3 * n + c)));
  }
}

// x [n] *= rsqrt(mean(x^2) + eps) * w
void rms_inplace(float* x, const float* w, int64_t n, float eps) {
  float ss = 0.0f;
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const float r = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] * r * w[i];
}

void rope_inplace(float* x, int64_t d, const float* cos, const float* sin, bool interleaved) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; ++i) {
    float* pa = interleaved ? x + 2 * i : x + i;
    float* pb = interleaved ? x + 2 * i + 1 : x + i + half;
    const float a = *pa, b = *pb;
    *pa = a * cos[i] - b * sin[i];
    *pb = b * cos[i] + a * sin[i];
  }
}

KI int64_t tiles_of(int64_t rows) { return (rows + kR - 1) / kR; }

// tile k of w (rows k*kR ..) against one token; y[row]
KI void w_tile(const MlaWeight& w, int64_t k, const ActSet& a, float* y, Scratch& s) {
  const int64_t r0 = k * kR;
  tile(w.type, w.data, row_bytes_of(w.type, w.in), r0, static_cast<int>(std::min<int64_t>(kR, w.out - r0)), a, 1,
       nullptr, y, w.out, s);
}

bool mla_valid(const MlaArgs& a, int64_t D) {
  auto ok = [](const MlaWeight& w, int64_t out, int64_t in) {
    return w.data && w.out == out && w.in == in && valid(w.type, in);
  };
  const int64_t H = a.heads, qk = a.nope + a.rope;
  if (H < 1 || a.nope % 32 || a.rank % 32 || a.rope % 2 || a.v < 1 || a.pos < 0) return false;
  const bool has_qa = a.q_a.data != nullptr;
  if (has_qa && (!ok(a.q_a, a.q_a.out, D) || a.q_a.out % 32 || !ok(a.q_b, H * qk, a.q_a.out))) return false;
  if (!has_qa && !ok(a.q_b, H * qk, D)) return false;
  return ok(a.kv_a, a.rank + a.rope, D) && ok(a.uk, H * a.rank, a.nope) && ok(a.uv, H * a.v, a.rank) &&
         ok(a.o, D, H * a.v) && (H * a.v) % 32 == 0;
}

}  // namespace

extern "C" {

// x [D] float32 (the normed hidden state) -> out [D] float32; writes cache row `pos`. Returns 0, 1 (no memory),
// 2 (bad arguments), 3 (no tables).
int kimi_mla_decode(const MlaArgs* args, const float* x, int64_t D, float* out, int n_threads) {
  const MlaArgs& a = *args;
  if (!mla_valid(a, D)) return 2;
  if (!g_tables_set) return 3;
  const int64_t H = a.heads, nope = a.nope, rope = a.rope, qk = nope + rope, rank = a.rank, S = a.pos + 1;
  const bool has_qa = a.q_a.data != nullptr, bf = a.cache_bf16 != 0;
  const int64_t qr = has_qa ? a.q_a.out : 0;
  const size_t esz = bf ? 2 : 4;
  // activations by the block of the weight that reads them; x once more when q's weight and kv_a's differ in it
  const MlaWeight& qx = has_qa ? a.q_a : a.q_b;
  const bool one_x = act_block(qx.type) == act_block(a.kv_a.type);
  ActBuf ax, axq, aq, an, ao;
  float* f = static_cast<float*>(std::malloc(
      (qr + rank + rope + H * qk + H * rank * 2 + H * S + H * a.v + 1) * sizeof(float)));
  if (!f || !ax.alloc(1, D, act_block(a.kv_a.type)) || (!one_x && !axq.alloc(1, D, act_block(qx.type))) ||
      !aq.alloc(1, std::max<int64_t>(qr, 32), has_qa ? act_block(a.q_b.type) : 32) ||
      !an.alloc(H, nope, act_block(a.uk.type)) || !ao.alloc(H, rank, act_block(a.uv.type))) {
    std::free(f);
    return 1;
  }
  ActBuf av;
  if (!av.alloc(1, H * a.v, act_block(a.o.type))) {
    std::free(f);
    return 1;
  }
  float* y_qa = f;                  // [qr]
  float* kv = y_qa + qr;            // [rank + rope]
  float* q = kv + rank + rope;      // [H, qk]
  float* q_lat = q + H * qk;        // [H, rank]
  float* o_lat = q_lat + H * rank;  // [H, rank]
  float* sc = o_lat + H * rank;     // [H, S]
  float* att = sc + H * S;          // [H, v]
  char* cache_lat = static_cast<char*>(a.latent);
  char* cache_pe = static_cast<char*>(a.k_pe);
  int failed = 0;
#pragma omp parallel num_threads(n_threads)
  {
    Scratch s;
    float* row = static_cast<float*>(std::malloc((rank + rope) * sizeof(float)));
    if (!s.alloc(std::max({D, qr, rank, nope, H * a.v})) || !row) {
#pragma omp atomic write
      failed = 1;
    }
    const ActSet& xq = one_x ? ax.set : axq.set;
#pragma omp single
    {
      ax.set.quantize(0, x);
      if (!one_x) axq.set.quantize(0, x);
    }
    // (implicit barrier) q_a and kv_a read the same token: one loop over both
    if (!failed) {
      const int64_t ta = has_qa ? tiles_of(qr) : 0, tk = tiles_of(rank + rope);
#pragma omp for schedule(static)
      for (int64_t k = 0; k < ta + tk; ++k) {
        if (k < ta) {
          w_tile(a.q_a, k, xq, y_qa, s);
        } else {
          w_tile(a.kv_a, k - ta, ax.set, kv, s);
        }
      }
#pragma omp single
      {
        if (has_qa) {
          rms_inplace(y_qa, a.q_a_norm, qr, a.eps);
          aq.set.quantize(0, y_qa);
        }
        rms_inplace(kv, a.kv_a_norm, rank, a.eps);
        rope_inplace(kv + rank, rope, a.cos, a.sin, a.interleaved != 0);
        store_row(cache_lat + a.pos * rank * esz, bf, rank, kv);
        store_row(cache_pe + a.pos * rope * esz, bf, rope, kv + rank);
      }
      const ActSet& qin = has_qa ? aq.set : xq;
#pragma omp for schedule(static)
      for (int64_t k = 0; k < tiles_of(H * qk); ++k) w_tile(a.q_b, k, qin, q, s);
#pragma omp for schedule(static)
      for (int64_t h = 0; h < H; ++h) {
        rope_inplace(q + h * qk + nope, rope, a.cos, a.sin, a.interleaved != 0);
        an.set.quantize(h, q + h * qk);
      }
      // q_lat [H, rank] = uk_h @ q_nope_h
      const int64_t tr = tiles_of(rank), rb_uk = row_bytes_of(a.uk.type, nope);
#pragma omp for schedule(static)
      for (int64_t k = 0; k < H * tr; ++k) {
        const int64_t h = k / tr, r0 = (k % tr) * kR;
        tile(a.uk.type, a.uk.data + h * rank * rb_uk, rb_uk, r0, static_cast<int>(std::min<int64_t>(kR, rank - r0)),
             an.set.from(h), 1, nullptr, q_lat + h * rank, rank, s);
      }
      // attention, by heads: this thread's heads [h0, h1) read each cache row once
      const int nt = omp_get_num_threads(), me = omp_get_thread_num();
      const int64_t h0 = H * me / nt, h1 = H * (me + 1) / nt;
      if (h1 > h0) {
        for (int64_t p = 0; p < S; ++p) {
          load_row(cache_lat + p * rank * esz, bf, rank, row);
          load_row(cache_pe + p * rope * esz, bf, rope, row + rank);
          int64_t h = h0;
          float d4[4];
          for (; h + 4 <= h1; h += 4) {  // the latent row against 4 heads at a time (rank % 32 == 0: whole vectors)
            dot4(q_lat + h * rank, row, rank, d4);
            for (int i = 0; i < 4; ++i)
              sc[(h + i) * S + p] = a.scale * (d4[i] + dot_f32(q + (h + i) * qk + nope, row + rank, rope));
          }
          for (; h < h1; ++h)
            sc[h * S + p] = a.scale * (dot1(q_lat + h * rank, row, rank) + dot_f32(q + h * qk + nope, row + rank, rope));
        }
        for (int64_t h = h0; h < h1; ++h) {
          float* sh = sc + h * S;
          float m = sh[0];
          for (int64_t p = 1; p < S; ++p) m = std::max(m, sh[p]);
          float z = 0.0f;
          for (int64_t p = 0; p < S; ++p) z += (sh[p] = std::exp(sh[p] - m));
          const float iz = 1.0f / z;
          for (int64_t p = 0; p < S; ++p) sh[p] *= iz;
          std::fill(o_lat + h * rank, o_lat + (h + 1) * rank, 0.0f);
        }
        for (int64_t p = 0; p < S; ++p) {
          load_row(cache_lat + p * rank * esz, bf, rank, row);
          int64_t h = h0;
          for (; h + 4 <= h1; h += 4) axpy4(sc + h * S + p, S, row, rank, o_lat + h * rank);
          for (; h < h1; ++h) axpy_f32(sc[h * S + p], row, o_lat + h * rank, rank);
        }
        for (int64_t h = h0; h < h1; ++h) ao.set.quantize(h, o_lat + h * rank);
      }
#pragma omp barrier
      // att [H, v] = uv_h @ o_lat_h
      const int64_t tv = tiles_of(a.v), rb_uv = row_bytes_of(a.uv.type, rank);
#pragma omp for schedule(static)
      for (int64_t k = 0; k < H * tv; ++k) {
        const int64_t h = k / tv, r0 = (k % tv) * kR;
        tile(a.uv.type, a.uv.data + h * a.v * rb_uv, rb_uv, r0, static_cast<int>(std::min<int64_t>(kR, a.v - r0)),
             ao.set.from(h), 1, nullptr, att + h * a.v, a.v, s);
      }
#pragma omp single
      av.set.quantize(0, att);
#pragma omp for schedule(static)
      for (int64_t k = 0; k < tiles_of(D); ++k) w_tile(a.o, k, av.set, out, s);
    }
    std::free(row);
  }
  std::free(f);
  return failed;
}

}  // extern "C"
