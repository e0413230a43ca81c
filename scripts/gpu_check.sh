#!/usr/bin/env bash
# One prepared check for a machine with a CUDA GPU (installs nothing; runs from the source tree):
#   1. prints the device;  2. pytest -m gpu tests/, then the Triton tests (tests/test_triton_kernels.py) on CUDA,
#      then the offloading runtime on CUDA (tests/test_offload_cuda.py: slots, streams, whole models vs the CPU;
#      its output also goes to $OUT/test_offload_cuda.log when OUT is set);
#   3. benchmarks the INT4 grouped GEMM (bench shape 2048x512 and K2.5's 7168x2048; 1, 8, 64 tokens per expert
#      over 8 slotted experts; block_n swept over 32/64/128) against the device's copy bandwidth, and the FP8
#      dequantization; writes $OUT/gpu_check.json when OUT is set; prints a short table last.
# Every benchmark row also carries its kernel's error against the reference (pytest may be absent).
# Exits 0 with a message when no CUDA device is present; non-zero when a test or a check failed (after the table).
# Usage: [OUT=dir] [PYTHON=python3] bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH=".${PYTHONPATH:+:${PYTHONPATH}}"
PY="${PYTHON:-$(command -v python || command -v python3 || true)}"
[[ -n "$PY" ]] || { echo "gpu_check: no python on PATH; set PYTHON=/path/to/python" >&2; exit 1; }
"$PY" -c 'import torch' || { echo "gpu_check: $PY cannot import torch" >&2; exit 1; }
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device (torch.cuda.is_available() is False); skipping"
    exit 0
fi
# Bound each step so that a hang cannot eat the machine's time (timeout is coreutils; absent: no bound).
limit() { if command -v timeout >/dev/null; then timeout "$@"; else shift; "$@"; fi; }

echo "== device"
"$PY" - <<'EOF'
import torch, triton
p = torch.cuda.get_device_properties(0)
print(f"{p.name}: sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB; "
      f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}")
EOF

gpu_rc=skipped; triton_rc=skipped; offload_rc=skipped
if "$PY" -c 'import pytest' 2>/dev/null; then
    echo "== pytest -m gpu tests/"
    gpu_rc=0; limit 300 "$PY" -m pytest -q -m gpu tests/ || gpu_rc=$?
    echo "== Triton tests on CUDA (tests/test_triton_kernels.py, not marked gpu)"
    triton_rc=0; limit 180 "$PY" -m pytest -q -m "not gpu" tests/test_triton_kernels.py || triton_rc=$?
    echo "== offloading runtime on CUDA (tests/test_offload_cuda.py; PYTHONPATH starts with . as exported above)"
    offload_rc=0
    limit 300 "$PY" -m pytest -q -rs tests/test_offload_cuda.py 2>&1 | tee ${OUT:+"$OUT/test_offload_cuda.log"} \
        || offload_rc=$?
else
    echo "== pytest is not installed: no test run; the benchmark still checks each kernel against its reference"
fi

echo "== benchmark"
bench_rc=0
GPU_RC=$gpu_rc TRITON_RC=$triton_rc OFFLOAD_RC=$offload_rc limit 300 "$PY" - <<'EOF' || bench_rc=$?
import json, os, sys, traceback

import torch
import triton

from kernels.triton_fp8 import bench_fp8_dequant
from kernels.triton_int4 import Int4Blocks, bench_int4_grouped, time_call

dev = torch.device("cuda")
props = torch.cuda.get_device_properties(dev)
n = min(1 << 30, torch.cuda.mem_get_info(dev)[0] // 4)  # bytes per copy buffer
src, dst = torch.empty(n, dtype=torch.uint8, device=dev), torch.empty(n, dtype=torch.uint8, device=dev)
copy_gbs = 2 * n / time_call(lambda: dst.copy_(src), 10, dev) / 1e9  # read + write
del src, dst
torch.cuda.empty_cache()

shapes = {"bench": (2048, 512), "k2.5": (7168, 2048)}  # (hidden, moe_intermediate)
sweep, best, errors = [], [], []
for name, (hidden, inter) in shapes.items():
    for tokens in (1, 8, 64):
        runs = []
        for block_n in (32, 64, 128):
            try:
                r = bench_int4_grouped(hidden, inter, tokens, experts=8, iters=20, device=dev, blocks=Int4Blocks(block_n=block_n))
            except Exception as e:  # one failing config must not hide the others: it is recorded and reported
                errors.append({"shape": name, "tokens": tokens, "block_n": block_n, "error": traceback.format_exc()})
                print(f"int4 {name} tokens={tokens} block_n={block_n}: {type(e).__name__}: {e}")
                continue
            runs.append({"shape": name, **r})
            torch.cuda.empty_cache()
        sweep += runs
        if runs:
            best.append(min(runs, key=lambda r: r["ffn_us"]))
fp8 = []
for out_f, in_f in ((7168, 2048), (2048, 7168), (18432, 7168)):  # K2 expert down/gate, a dense MLP matrix
    try:
        fp8.append(bench_fp8_dequant(out_f, in_f, device=dev))
    except Exception as e:
        errors.append({"fp8": [out_f, in_f], "error": traceback.format_exc()})
        print(f"fp8 {out_f}x{in_f}: {type(e).__name__}: {e}")

result = {
    "device": props.name, "sm": f"{props.major}{props.minor}", "torch": torch.__version__, "triton": triton.__version__,
    "pytest_gpu_rc": os.environ["GPU_RC"], "pytest_triton_rc": os.environ["TRITON_RC"],
    "pytest_offload_cuda_rc": os.environ["OFFLOAD_RC"],
    "copy_gbs_read_plus_write": copy_gbs, "int4_best": best, "int4_sweep": sweep, "fp8_dequant": fp8, "errors": errors,
}
if os.environ.get("OUT"):
    path = os.path.join(os.environ["OUT"], "gpu_check.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")

print(f"\n{props.name}; copy (read+write) {copy_gbs:.0f} GB/s; pytest -m gpu rc={result['pytest_gpu_rc']}, "
      f"Triton tests rc={result['pytest_triton_rc']}, offload CUDA tests rc={result['pytest_offload_cuda_rc']}; "
      f"GB/s = weight bytes / kernel time (CUDA graph)")
print(f"{'shape':6} {'tok/exp':>7} {'blk_n':>5} {'gate GB/s':>9} {'down GB/s':>9} {'ffn GB/s':>8} {'% copy':>6} "
      f"{'ffn us':>7} {'eager us':>8} {'max rel err':>11}")
for r in best:
    err = max(r["gate_err"], r["down_err"], r["ffn_err"])
    print(f"{r['shape']:6} {r['tokens_per_expert']:>7} {r['block_n']:>5} {r['gate_gbs']:>9.0f} {r['down_gbs']:>9.0f} "
          f"{r['ffn_gbs']:>8.0f} {100 * r['ffn_gbs'] / copy_gbs:>6.1f} {r['ffn_us']:>7.1f} {r['ffn_eager_us']:>8.1f} "
          f"{err:>11.1e}")
for r in fp8:
    print(f"fp8 dequant {r['out']}x{r['in']} -> {r['dtype']}: {r['gbs']:.0f} GB/s (fp8 read + output write), "
          f"{r['us']:.1f} us, max |diff| vs torch {r['max_abs_diff']:.1e}")
# bf16 activations: exact products, so only fp32 summation order differs (the FFN also rounds h to bf16)
bad = [r for r in sweep if max(r["gate_err"], r["down_err"]) > 1e-4 or r["ffn_err"] > 2e-3]
bad += [r for r in fp8 if r["max_abs_diff"] != 0]
if errors or bad:
    print(f"FAILED: {len(errors)} configuration(s) raised, {len(bad)} exceed the error bounds (see the JSON)")
    sys.exit(1)
EOF

status=0
for rc in "$gpu_rc" "$triton_rc" "$offload_rc" "$bench_rc"; do [[ "$rc" == 0 || "$rc" == skipped ]] || status=1; done
exit "$status"
