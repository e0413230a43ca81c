"""kimi-offload and llama.cpp decode and prefill on the same files, CPU only, page cache warm, runs alternating (a
benchmark, not a CI test).

For each model given, per round: `llama-bench -t N -p P -n G -r 1` (its defaults, so its CPU repack of Q4_0 is on;
and `--repack 0` too with --no-repack-too unset), then `kimi-offload bench --device cpu --prompt-len P --gen-len G
--runs 1`, each a fresh process; medians over the rounds and the ratio ours / llama.cpp are printed as one JSON line
per model, and a table at the end. A safetensors folder is benchmarked by kimi-offload only and compared with the
llama.cpp figures of the GGUF given with `--peer` (the same weights, converted). Before a model's rounds its files
are read through once, so that both runtimes find them in the page cache (on a machine whose RAM holds a file but
not all the files of a session, the experts neither runtime has touched yet would otherwise come from disk).

    python benchmarks/cpu_vs_llama.py --llama-bin DIR --model FILE.gguf [--model FILE2.gguf ...]
        [--model SAFETENSORS_DIR --peer FILE.gguf] [--threads 2] [--prompt-len 128] [--gen-len 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def llama(bin_dir: Path, gguf: Path, args: argparse.Namespace, extra: list[str]) -> tuple[float, float]:
    """(decode tok/s, prefill tok/s) from one llama-bench process."""
    cmd = [str(bin_dir / "llama-bench"), "-m", str(gguf), "-t", str(args.threads), "-r", "1", "-o", "json",
           "-p", str(args.prompt_len), "-n", str(args.gen_len), *extra]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    tg = next(r["avg_ts"] for r in rows if r.get("n_gen", 0) > 0)
    pp = next(r["avg_ts"] for r in rows if r.get("n_prompt", 0) > 0 and r.get("n_gen", 0) == 0)
    return float(tg), float(pp)


def ours(model: Path, args: argparse.Namespace) -> dict[str, Any]:
    """`kimi-offload bench` in a fresh process (run from the repository root: this tree's code)."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "b.json"
        cmd = [sys.executable, "-m", "offload.cli", "bench", "--model", str(model), "--device", "cpu",
               "--prompt-len", str(args.prompt_len), "--gen-len", str(args.gen_len), "--runs", "1",
               "--json", str(out), *args.ours_flag]  # fmt: skip
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, env=env)
        data: dict[str, Any] = json.loads(out.read_text())
    return data


def figure(data: dict[str, Any], key: str) -> float:
    """A tok/s figure from bench's JSON (the median of its runs)."""
    value = data[key]
    return float(value["median"] if isinstance(value, dict) else value)


def warm(*paths: Path) -> float:
    """Read every file of `paths` (a file, or a folder's files) once, into the page cache; GB read."""
    total = 0
    buf = bytearray(1 << 24)
    for p in paths:
        for f in sorted(p.iterdir()) if p.is_dir() else [p]:
            if not f.is_file():
                continue
            with open(f, "rb", buffering=0) as fh:
                while n := fh.readinto(buf):
                    total += n
    return total / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-bin", type=Path, required=True)
    ap.add_argument("--model", type=Path, action="append", required=True)
    ap.add_argument("--peer", type=Path, help="the GGUF whose llama.cpp figures a safetensors --model is set against")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ours-flag", action="append", default=[], help="an extra flag for kimi-offload bench")
    ap.add_argument("--no-repack-too", action="store_true", help="skip llama-bench --repack 0")
    ap.add_argument("--decode-key", default="decode_tok_s")
    ap.add_argument("--prefill-key", default="prefill_tok_s")
    args = ap.parse_args()
    table = []
    for model in args.model:
        gguf = model if model.suffix == ".gguf" else args.peer
        if gguf is None:
            raise SystemExit(f"{model} is not a GGUF file: give --peer FILE.gguf for llama.cpp's side")
        runs: dict[str, list[tuple[float, float]]] = {"llama": [], "llama_repack0": [], "ours": []}
        warm(*dict.fromkeys((gguf, model)))
        for _ in range(args.rounds):
            runs["llama"].append(llama(args.llama_bin, gguf, args, []))
            if not args.no_repack_too:
                runs["llama_repack0"].append(llama(args.llama_bin, gguf, args, ["--repack", "0"]))
            data = ours(model, args)
            runs["ours"].append((figure(data, args.decode_key), figure(data, args.prefill_key)))
        med = {k: (statistics.median(a for a, _ in v), statistics.median(b for _, b in v)) for k, v in runs.items()
               if v}  # fmt: skip
        row = {
            "model": str(model),
            "llama_file": str(gguf),
            "threads": args.threads,
            "prompt_len": args.prompt_len,
            "gen_len": args.gen_len,
            "rounds": args.rounds,
            "ours_decode_tok_s": med["ours"][0],
            "ours_prefill_tok_s": med["ours"][1],
            "llama_decode_tok_s": med["llama"][0],
            "llama_prefill_tok_s": med["llama"][1],
            "decode_ratio": med["ours"][0] / med["llama"][0],
            "prefill_ratio": med["ours"][1] / med["llama"][1],
            "runs": runs,
        }
        if "llama_repack0" in med:
            row["llama_repack0_decode_tok_s"], row["llama_repack0_prefill_tok_s"] = med["llama_repack0"]
        print(json.dumps(row), flush=True)
        table.append(row)
    print(f"\n{'model':<44} {'ours tg':>8} {'llama tg':>8} {'ratio':>6} {'ours pp':>8} {'llama pp':>8} {'ratio':>6}")
    for r in table:
        print(f"{Path(r['model']).name:<44} {r['ours_decode_tok_s']:>8.2f} {r['llama_decode_tok_s']:>8.2f} "
              f"{r['decode_ratio']:>6.2f} {r['ours_prefill_tok_s']:>8.2f} {r['llama_prefill_tok_s']:>8.2f} "
              f"{r['prefill_ratio']:>6.2f}")


if __name__ == "__main__":
    main()
