// A decode token's whole layer on the CPU in two calls (included by ggml_cpu.cpp, after the attention, the INT4
// experts and the router, whose functions it calls), and the SwiGLU MLP in one. The Python between the two calls
// only books the routed experts in the expert store (acquire, release, counters) and hands their pointers over:
//
//   kimi_decode_attn:  h += bf16(attn(rms(h) * attn_norm));  x2 = rms(h) * mlp_norm;  (ids, wts) = route(x2)
//   kimi_decode_ffn:   h += bf16(routed(x2; ids, wts) + mlp(x2))   (mlp: the shared expert, or the dense MLP)
//
// with the torch path's roundings (offload/model/transformer.py): the residual stream h and the norms in bf16, the
// attention and the MLPs in float32 between bf16 roundings, routed + shared summed in float32.
//
// kimi_ggml_mlp: y [T, D] = down(silu(gate x) * up x), float32 in and out, x quantized once per activation block.

struct MlpArgs {  // gate, up [I, D], down [D, I] in ggml types
  MlaWeight gate, up, down;
};

struct DecodeLayerArgs {
  const uint16_t* attn_norm;  // [D] bf16
  const uint16_t* mlp_norm;   // [D] bf16
  const MlaArgs* mla;         // the attention (its cache, position, cos and sin set for this token)
  const float* router_w;      // [E, D] float32; null: a dense layer (no routing, no routed experts)
  const float* router_b;      // [E]
  int64_t n_experts;
  int32_t top_k, n_group, topk_group, norm_topk;
  float scaling;
  float eps;                  // the residual norms' eps
  int32_t expert_kind;        // 0: ggml types (3 pointers an expert), 1: INT4 group 32 (packed, scale per projection)
  int32_t expert_types[3];    // ggml: gate, up, down
  int64_t expert_inter;       // I
  MlpArgs mlp;                // the shared expert or the dense MLP; gate.data null: none
};

namespace {

bool mlp_valid(const MlpArgs& m, int64_t D) {
  const int64_t I = m.gate.out;
  return m.gate.data && m.up.data && m.down.data && I > 0 && m.gate.in == D && m.up.in == D && m.up.out == I &&
         m.down.in == I && m.down.out == D && valid(m.gate.type, D) && valid(m.up.type, D) && valid(m.down.type, I);
}

KI void add_bf16(uint16_t* h, const float* y, int64_t n) {  // h = bf16(h + bf16(y)), as torch adds bf16 tensors
  for (int64_t i = 0; i < n; ++i) h[i] = f_to_bf16(bf16_to_f(h[i]) + bf16_to_f(f_to_bf16(y[i])));
}

}  // namespace

extern "C" {

// y [T, D] = down(silu(gate x) * up x), x [T, D] float32. Returns 0, 1 (no memory), 2 (bad arguments), 3.
int kimi_ggml_mlp(const MlpArgs* args, const float* x, int64_t T, int64_t D, float* y, int n_threads) {
  const MlpArgs& m = *args;
  if (T < 0 || !mlp_valid(m, D)) return 2;
  if (T == 0) return 0;
  // kimi_ggml_moe with one expert taking every token at weight 1 (y = 0 + 1 * its output: the output itself)
  int64_t* toks = static_cast<int64_t*>(std::malloc(T * sizeof(int64_t)));
  float* ones = static_cast<float*>(std::malloc(T * sizeof(float)));
  if (!toks || !ones) {
    std::free(toks);
    std::free(ones);
    return 1;
  }
  for (int64_t t = 0; t < T; ++t) {
    toks[t] = t;
    ones[t] = 1.0f;
  }
  const int64_t ptrs[3] = {reinterpret_cast<int64_t>(m.gate.data), reinterpret_cast<int64_t>(m.up.data),
                           reinterpret_cast<int64_t>(m.down.data)};
  const int types[3] = {m.gate.type, m.up.type, m.down.type};
  const int64_t begin = 0, end = T;
  const int rc = kimi_ggml_moe(x, T, D, m.gate.out, 1, ptrs, types, &begin, &end, toks, ones, y, n_threads);
  std::free(toks);
  std::free(ones);
  return rc;
}

// The first half of a decode token's layer: h [D] bf16 (updated in place) -> x2f [D] float32 (the normed stream
// the MLP reads) and, for a MoE layer, ids [top_k] (best first) and wts [top_k]. Returns 0, 1, 2, 3.
int kimi_decode_attn(const DecodeLayerArgs* args, uint16_t* h, int64_t D, float* x2f, int64_t* ids, float* wts,
                     int n_threads) {
  const DecodeLayerArgs& a = *args;
  if (D < 1 || !a.attn_norm || !a.mlp_norm || !a.mla) return 2;
  uint16_t* xn = static_cast<uint16_t*>(std::malloc(D * sizeof(uint16_t)));
  float* f = static_cast<float*>(std::malloc((2 * D + std::max<int64_t>(a.n_experts, 1)) * sizeof(float)));
  if (!xn || !f) {
    std::free(xn);
    std::free(f);
    return 1;
  }
  float* xf = f;           // [D] the normed stream the attention reads
  float* y = f + D;        // [D] the attention's output
  float* scores = y + D;   // [E]
  rms_norm_bf16_row(h, D, a.attn_norm, a.eps, xn);
  for (int64_t i = 0; i < D; ++i) xf[i] = bf16_to_f(xn[i]);
  int rc = kimi_mla_decode(a.mla, xf, D, y, n_threads);
  if (rc == 0) {
    add_bf16(h, y, D);
    rms_norm_bf16_row(h, D, a.mlp_norm, a.eps, xn);
    for (int64_t i = 0; i < D; ++i) x2f[i] = bf16_to_f(xn[i]);
    if (a.router_w)
      rc = kimi_route(xn, 1, 1, D, a.router_w, a.router_b, a.n_experts, a.top_k, a.n_group, a.topk_group,
                      a.norm_topk, a.scaling, scores, ids, wts, n_threads);
  }
  std::free(xn);
  std::free(f);
  return rc;
}

// The second half: h [D] bf16 += bf16(routed + mlp) with x2f [D] from the first. The n routed experts (sorted by
// id): ptrs, 3 an expert (ggml: gate, up, down) or 6 (INT4: packed and scale of gate, up, down), weights wts [n].
// Returns 0, 1, 2, 3.
int kimi_decode_ffn(const DecodeLayerArgs* args, uint16_t* h, const float* x2f, int64_t D, int64_t n,
                    const int64_t* ptrs, const float* wts, int n_threads) {
  const DecodeLayerArgs& a = *args;
  const bool has_mlp = a.mlp.gate.data != nullptr;
  if (D < 1 || n < 0 || (n > 0 && !a.router_w) || (has_mlp && !mlp_valid(a.mlp, D))) return 2;
  float* f = static_cast<float*>(std::malloc(2 * D * sizeof(float)));
  int64_t* idx = static_cast<int64_t*>(std::calloc(3 * n + 1, sizeof(int64_t)));  // begin, end, tokens (0)
  if (!f || !idx) {
    std::free(f);
    std::free(idx);
    return 1;
  }
  float* y = f;       // [D] routed, then routed + mlp
  float* ym = f + D;  // [D] the MLP's
  int rc = 0;
  if (n > 0 && a.expert_kind == 0) {
    int64_t* begin = idx;  // expert e's one pair is pair e, of token 0
    int64_t* end = idx + n;
    for (int64_t e = 0; e < n; ++e) {
      begin[e] = e;
      end[e] = e + 1;
    }
    rc = kimi_ggml_moe(x2f, 1, D, a.expert_inter, n, ptrs, a.expert_types, begin, end, idx + 2 * n, wts, y,
                       n_threads);
  } else if (n > 0 && a.expert_kind == 1) {
    rc = kimi_int4_moe_decode(x2f, D, a.expert_inter, n, ptrs, wts, y, n_threads);
  } else if (n > 0) {
    rc = 2;
  } else {
    std::fill(y, y + D, 0.0f);
  }
  if (rc == 0 && has_mlp) {
    rc = kimi_ggml_mlp(&a.mlp, x2f, 1, D, ym, n_threads);
    if (rc == 0 && a.router_w)
      for (int64_t i = 0; i < D; ++i) y[i] += ym[i];
    else if (rc == 0)
      std::memcpy(y, ym, D * sizeof(float));  // a dense layer: its MLP alone
  }
  if (rc == 0) add_bf16(h, y, D);
  std::free(f);
  std::free(idx);
  return rc;
}

}  // extern "C"
