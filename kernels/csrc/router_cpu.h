// One MoE layer's router for a few tokens on the CPU in one call (included by ggml_cpu.cpp): DeepSeek-V3 / Kimi
// routing, float32: scores = sigmoid(x @ W.T), the choice ranks scores + bias (group-limited when n_group > 1: only
// the topk_group groups with the best sums of their two best choices), the k best chosen in descending order, and
// their unbiased scores, normalized to sum 1 when asked, times `scaling`, as the weights.
// dot_f32 and load_row come from mla_cpu.h, included before. Bound in kernels/cpu_router.py; the torch path
// (offload/model/router.py) is the reference the tests hold it to.

namespace {

// indices of the k largest of v [n] (k <= n), largest first; ties to the lower index
void top_k(const float* v, int64_t n, int k, int64_t* out) {
  float best[64];
  int m = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (m == k && !(v[i] > best[k - 1])) continue;
    int j = m < k ? m++ : k - 1;
    while (j > 0 && v[i] > best[j - 1]) {
      best[j] = best[j - 1];
      out[j] = out[j - 1];
      --j;
    }
    best[j] = v[i];
    out[j] = i;
  }
}

}  // namespace

extern "C" {

// x [T, D] float32, or bf16 when x_bf16; W [E, D] float32; bias [E] float32 -> ids [T, k] int64, weights [T, k]
// float32. scores: scratch [T, E] float32 (the sigmoid scores, left there). Returns 0, or 2 for bad arguments
// (k outside 1..min(E, 64), E not a multiple of n_group, topk_group outside 1..n_group, a group of fewer than 2).
int kimi_route(const void* x, int x_bf16, int64_t T, int64_t D, const float* W, const float* bias, int64_t E, int k,
               int n_group, int topk_group, int norm, float scaling, float* scores, int64_t* ids, float* weights,
               int n_threads) {
  if (T < 0 || D < 1 || E < 1 || k < 1 || k > 64 || k > E || n_group < 1 || E % n_group || topk_group < 1 ||
      topk_group > n_group || (n_group > 1 && E / n_group < 2) || (n_group > 1 && n_group > 64))
    return 2;
  float* xf = static_cast<float*>(std::malloc(std::max<int64_t>(T * D, 1) * sizeof(float)));
  float* choice = static_cast<float*>(std::malloc(std::max<int64_t>(T * E, 1) * sizeof(float)));
  if (!xf || !choice) {
    std::free(xf);
    std::free(choice);
    return 1;
  }
  load_row(x, x_bf16 != 0, T * D, xf);
#pragma omp parallel for schedule(static) num_threads(n_threads)
  for (int64_t e = 0; e < E; ++e) {  // each thread streams its share of W's rows once for all tokens
    const float* w = W + e * D;
    for (int64_t t = 0; t < T; ++t) {
      const float s = 1.0f / (1.0f + std::exp(-dot_f32(xf + t * D, w, D)));
      scores[t * E + e] = s;
      choice[t * E + e] = s + bias[e];
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    float* c = choice + t * E;
    if (n_group > 1) {  // keep the topk_group groups with the best sums of two; the others cannot be chosen
      const int64_t per = E / n_group;
      float gs[64];
      int64_t top2[2], keep[64];
      for (int g = 0; g < n_group; ++g) {
        top_k(c + g * per, per, 2, top2);
        gs[g] = c[g * per + top2[0]] + c[g * per + top2[1]];
      }
      top_k(gs, n_group, topk_group, keep);
      bool kept[64] = {false};
      for (int j = 0; j < topk_group; ++j) kept[keep[j]] = true;
      for (int g = 0; g < n_group; ++g)
        if (!kept[g])
          for (int64_t i = 0; i < per; ++i) c[g * per + i] = -INFINITY;
    }
    int64_t* id = ids + t * k;
    top_k(c, E, k, id);
    float* w = weights + t * k;
    float sum = 0.0f;
    for (int j = 0; j < k; ++j) sum += (w[j] = scores[t * E + id[j]]);
    for (int j = 0; j < k; ++j) w[j] = (norm ? w[j] / (sum + 1e-20f) : w[j]) * scaling;  // as the torch path
  }
  std::free(xf);
  std::free(choice);
  return 0;
}

}  // extern "C"
