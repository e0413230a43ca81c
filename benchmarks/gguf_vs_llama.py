"""kimi-offload and llama.cpp on the same GGUF files, as llama.cpp itself wrote them.

A synthetic checkpoint (a preset, or --model DIR) is exported to a plain HF folder, converted by llama.cpp's own
convert_hf_to_gguf.py to BF16, and quantized by llama-quantize to each requested type (the IQ mix with an importance
matrix from llama-imatrix). For every file: kimi-offload loads it as written and decodes greedily from the same prompt
ids as llama-server (POST /completion with token ids, temperature 0, return_tokens); the tokens are compared, and
decode tok/s is measured next to llama-bench's (same threads; runs alternate, the page cache warm for both).

Not part of CI. llama.cpp builds here in ~25 minutes (../shared/reference/GGUF.md):

    python benchmarks/gguf_vs_llama.py --llama-src .../vendor/llama.cpp [--preset mini]
        [--types F32,Q4_0,Q4_K_M,Q2_K,IQ_MIX] [--base f32|bf16] [--threads 2] [--prompt-len 32] [--gen 32] [--runs 2]
        [--work DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from offload.engine.engine import Engine  # noqa: E402
from offload.engine.sampling import SamplingParams  # noqa: E402
from offload.engine.tokenizer import Tokenizer  # noqa: E402
from offload.planner.plan import RuntimeConfig  # noqa: E402

# llama-quantize type -> extra arguments; IQ_MIX: IQ1_M experts with IQ2_XXS down projections, needs an imatrix
TYPES: dict[str, list[str]] = {
    "F32": [],  # the converter's own output: no quantization, no activation rounding in llama.cpp's matmuls
    "BF16": [],  # the same with --outtype bf16 (for models whose F32 file would not fit the disk)
    "Q4_0": ["Q4_0"],
    "Q4_K_M": ["Q4_K_M"],
    "Q2_K": ["Q2_K"],
    "IQ_MIX": ["--tensor-type", "ffn_down_exps=iq2_xxs", "--tensor-type", "attn=q8_0", "IQ1_M"],
}


def _compare_module() -> Any:
    spec = importlib.util.spec_from_file_location("compare", ROOT / "benchmarks" / "compare.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def convert(hf: Path, out: Path, llama_src: Path, outtype: str) -> Path:
    """llama.cpp's converter, the synthetic tokenizer declared `gpt-2` (the converter knows tokenizers by hash)."""
    if out.exists():
        return out
    script = (
        "import sys; sys.argv = sys.argv[1:]; sys.path.insert(0, sys.argv[0].rsplit('/', 1)[0] + '/gguf-py');"
        "sys.path.insert(0, sys.argv[0].rsplit('/', 1)[0]);"
        "from conversion import base; base.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'gpt-2';"
        "import runpy; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    conv = str(llama_src / "convert_hf_to_gguf.py")
    run(
        [sys.executable, "-c", script, conv, str(hf), "--outtype", outtype, "--outfile", str(out)], "convert_hf_to_gguf"
    )
    return out


def quantize(bin_dir: Path, f32: Path, kind: str, work: Path, threads: int, corpus: Path) -> Path:
    if kind in ("F32", "BF16"):  # the converter's own file
        return f32
    out = work / f"model-{kind}.gguf"
    if out.exists():
        return out
    args = TYPES[kind]
    extra: list[str] = []
    if kind.startswith("IQ"):
        imatrix = work / "imatrix.dat"
        if not imatrix.exists():
            # a reference file larger than RAM pages from disk every chunk: take the Q4_0 file when there is one
            q4 = work / "model-Q4_0.gguf"
            source = q4 if q4.exists() and f32.stat().st_size > 8e9 else f32
            run(
                [
                    str(bin_dir / "llama-imatrix"),
                    "-m",
                    str(source),
                    "-f",
                    str(corpus),
                    "-o",
                    str(imatrix),
                    "-t",
                    str(threads),
                    "-c",
                    "128",
                    "--chunks",
                    "32",
                ],
                "llama-imatrix",
            )
        extra = ["--imatrix", str(imatrix)]
    run([str(bin_dir / "llama-quantize"), *extra, *args[:-1], str(f32), str(out), args[-1], str(threads)], kind)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def llama_tokens(bin_dir: Path, gguf: Path, prompt: list[int], n: int, threads: int) -> list[int]:
    """Greedy tokens from llama-server for prompt ids."""
    port = free_port()
    server = subprocess.Popen(
        [str(bin_dir / "llama-server"), "-m", str(gguf), "-t", str(threads), "-c", "2048", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        body = {
            "prompt": prompt,
            "n_predict": n,
            "temperature": 0.0,
            "top_k": 1,
            "return_tokens": True,
            "cache_prompt": False,
            "ignore_eos": True,
        }
        req = urllib.request.Request(
            f"{url}/completion", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=600) as r:
            return list(json.loads(r.read())["tokens"])
    finally:
        server.terminate()
        server.wait(30)


def llama_bench_tok_s(bin_dir: Path, gguf: Path, n: int, threads: int) -> float:
    out = run(
        [str(bin_dir / "llama-bench"), "-m", str(gguf), "-t", str(threads), "-p", "0", "-n", str(n), "-o", "json"],
        "llama-bench",
    )
    rows = json.loads(out)
    return float(rows[0]["avg_ts"])


def ours(gguf: Path, prompt: list[int], n: int, dtype: str) -> tuple[list[int], float]:
    with Engine(gguf, RuntimeConfig(context=2048, device="cpu", dtype=dtype)) as engine:  # type: ignore[arg-type]
        r = engine.generate(prompt, SamplingParams(temperature=0.0), n, ignore_eos=True).run()
    return r.token_ids, r.decode_tok_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-src", type=Path, required=True, help="llama.cpp source with build/bin built")
    ap.add_argument("--preset", default="mini")
    ap.add_argument("--model", type=Path, help="a checkpoint folder instead of a preset")
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument(
        "--base", default="f32", choices=("f32", "bf16"), help="the converter's output type (bf16 for large models)"
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/gguf-vs-llama"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch_threads = args.threads
    import torch

    torch.set_num_threads(torch_threads)
    bin_dir = args.llama_src / "build" / "bin"
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    src = args.model
    if src is None:
        src = work / args.preset
        if not src.exists():
            run([sys.executable, "-m", "offload.cli", "make-model", "--preset", args.preset, "--out", str(src)], "make")
    compare = _compare_module()
    base = args.base.upper()
    ref = work / f"model-{base}.gguf"
    if not ref.exists():
        hf = compare.export_hf(src, work / "hf", torch.bfloat16 if base == "BF16" else torch.float32)
        convert(hf, ref, args.llama_src, base.lower())
        shutil.rmtree(hf)  # the HF copy is as large as the converted file
    f32 = ref
    from offload.bench.runner import PROSE

    ids = Tokenizer.from_dir(src).encode(PROSE)
    prompt = (ids * (args.prompt_len // len(ids) + 1))[: args.prompt_len]
    corpus = ROOT / "offload" / "synth" / "corpus.txt"
    results: list[dict[str, Any]] = []
    for kind in args.types.split(","):
        gguf = quantize(bin_dir, f32, kind, work, args.threads, corpus)
        theirs = llama_tokens(bin_dir, gguf, prompt, args.gen, args.threads)
        mine, _ = ours(gguf, prompt, args.gen, "float32")
        same = next(
            (i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b), min(len(mine), len(theirs))
        )
        ours_tps, llama_tps = [], []
        for _ in range(args.runs):  # alternate, page cache warm for both
            ours_tps.append(ours(gguf, prompt, args.gen, "bfloat16")[1])
            llama_tps.append(llama_bench_tok_s(bin_dir, gguf, args.gen, args.threads))
        row = {
            "type": kind,
            "file_bytes": gguf.stat().st_size,
            "greedy_agree_prefix": same,
            "greedy_tokens": args.gen,
            "greedy_equal_positions": sum(a == b for a, b in zip(mine, theirs, strict=False)),
            "ours_decode_tok_s": statistics.median(ours_tps),
            "llama_bench_decode_tok_s": statistics.median(llama_tps),
            "ratio": statistics.median(ours_tps) / statistics.median(llama_tps),
            "ours_runs": ours_tps,
            "llama_runs": llama_tps,
        }
        results.append(row)
        print(
            f"{kind:8s} {row['file_bytes'] / 1e6:8.1f} MB  greedy: first {same}/{args.gen} equal "
            f"({row['greedy_equal_positions']} positions)  decode: ours {row['ours_decode_tok_s']:.2f} tok/s, "
            f"llama-bench {row['llama_bench_decode_tok_s']:.2f} tok/s, ratio {row['ratio']:.2f}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "prompt": prompt, "results": results}, indent=1))


if __name__ == "__main__":
    main()
