// ggml's own CPU matmul on given weight bytes: y [T, out] = x [T, in] @ W.T with W of a ggml type, timed per call.
// Built and run by benchmarks/ggml_vs_ours.py against the libggml of a llama.cpp build (not part of the project's
// build). One thread pool for all calls (as llama.cpp keeps one); the plain CPU path, without the extra-buffer repack
// that llama-bench applies to some types by default (`--repack 0`).
//
//   ggml_matmul TYPE OUT IN T THREADS COPIES CALLS WEIGHTS_FILE
//
// WEIGHTS_FILE holds OUT rows of TYPE for IN weights each (ggml_row_size bytes apart); COPIES copies are made and the
// calls cycle through them (a rotation larger than the last-level cache makes every call read from DRAM). Prints one
// JSON line: {"type", "out", "in", "tokens", "threads", "seconds": [per call]}.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "ggml-cpu.h"
#include "ggml.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char** argv) {
  if (argc != 9) {
    fprintf(stderr, "usage: %s TYPE OUT IN T THREADS COPIES CALLS WEIGHTS_FILE\n", argv[0]);
    return 2;
  }
  int type = -1;
  for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
    const char* name = ggml_type_name((enum ggml_type)t);
    if (name && strcasecmp(name, argv[1]) == 0) type = t;  // ggml spells q4_K, we q4_k
  }
  if (type < 0) {
    fprintf(stderr, "unknown ggml type %s\n", argv[1]);
    return 2;
  }
  const int64_t out = atoll(argv[2]), in = atoll(argv[3]), T = atoll(argv[4]);
  const int threads = atoi(argv[5]), copies = atoi(argv[6]), calls = atoi(argv[7]);
  const size_t row = ggml_row_size((enum ggml_type)type, in), wbytes = row * (size_t)out;
  FILE* f = fopen(argv[8], "rb");
  if (!f) {
    fprintf(stderr, "cannot open %s\n", argv[8]);
    return 2;
  }
  void* bytes = malloc(wbytes);
  if (!bytes || fread(bytes, 1, wbytes, f) != wbytes) {
    fprintf(stderr, "%s: expected %zu bytes of %s [%lld, %lld]\n", argv[8], wbytes, argv[1], (long long)out,
            (long long)in);
    return 2;
  }
  fclose(f);
  ggml_cpu_init();
  const size_t overhead = ggml_tensor_overhead() * (size_t)(3 * copies + 8) + ggml_graph_overhead() * copies;
  struct ggml_init_params ip = {overhead + (wbytes + 64) * copies + (size_t)(T * (in + out) * 4 + 4096) * copies,
                                NULL, false};
  struct ggml_context* ctx = ggml_init(ip);
  if (!ctx) {
    fprintf(stderr, "ggml_init failed (%zu bytes)\n", ip.mem_size);
    return 1;
  }
  struct ggml_cgraph** graphs = malloc(sizeof(*graphs) * copies);
  for (int c = 0; c < copies; ++c) {
    struct ggml_tensor* w = ggml_new_tensor_2d(ctx, (enum ggml_type)type, in, out);
    memcpy(w->data, bytes, wbytes);
    struct ggml_tensor* x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, in, T);
    float* xd = (float*)x->data;
    srand(1234 + c);
    for (int64_t i = 0; i < in * T; ++i) xd[i] = (float)rand() / (float)RAND_MAX * 2.0f - 1.0f;
    graphs[c] = ggml_new_graph(ctx);
    ggml_build_forward_expand(graphs[c], ggml_mul_mat(ctx, w, x));
  }
  struct ggml_threadpool_params tpp = ggml_threadpool_params_default(threads);
  struct ggml_threadpool* pool = ggml_threadpool_new(&tpp);
  struct ggml_cplan plan = ggml_graph_plan(graphs[0], threads, pool);
  uint8_t* work = malloc(plan.work_size + 64);
  plan.work_data = work;
  ggml_graph_compute(graphs[copies - 1], &plan);  // warm-up
  printf("{\"type\": \"%s\", \"out\": %lld, \"in\": %lld, \"tokens\": %lld, \"threads\": %d, \"seconds\": [", argv[1],
         (long long)out, (long long)in, (long long)T, threads);
  for (int i = 0; i < calls; ++i) {
    const double t0 = now();
    if (ggml_graph_compute(graphs[i % copies], &plan) != GGML_STATUS_SUCCESS) {
      fprintf(stderr, "ggml_graph_compute failed\n");
      return 1;
    }
    printf("%s%.9f", i ? ", " : "", now() - t0);
  }
  printf("]}\n");
  ggml_threadpool_free(pool);
  ggml_free(ctx);
  free(work);
  free(graphs);
  free(bytes);
  return 0;
}
