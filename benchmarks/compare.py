"""kimi-offload side by side with what users would run instead, on one synthetic checkpoint, in one run.

Peers (optional; each one missing is skipped with a message saying how to install it):
- transformers' DeepseekV3ForCausalLM on the CPU, all weights in RAM (bf16):    pip install transformers
- the same with accelerate's disk offload under a RAM cap (--hf-offload-gib):   pip install transformers accelerate
- llama.cpp through llama-cpp-python built from source, same thread count, on a GGUF conversion of the same weights
  quantized to Q4_0 (32 weights + an fp16 scale: the GGUF type closest to K2.5's INT4 group 32 with bf16 scales):
      CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python
  The conversion runs llama.cpp's own convert_hf_to_gguf.py, found in the llama-cpp-python sdist (--llama-src DIR,
  the sdist's vendor/llama.cpp; `pip download llama-cpp-python --no-binary :all: --no-deps` fetches it).

Every peer gets the same prompt token ids and generates the same number of tokens greedily (end-of-text ignored).
Runs alternate between runtimes (ours, then each peer, repeated), so drift in the machine's speed hits all alike.

    python benchmarks/compare.py --model DIR --work DIR [--prompt-len 128] [--gen-len 32] [--runs 3]
        [--peers transformers,transformers-offload,llama.cpp] [--hf-offload-gib 4] [--llama-src DIR] [--json F]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from kernels.dequant import dequantize
from offload.bench.limits import read_files
from offload.bench.runner import run_once
from offload.checkpoint import open_checkpoint
from offload.engine.engine import Engine
from offload.hf_config import HfConfig
from offload.planner.plan import RuntimeConfig
from offload.tokenizer_pattern import KIMI_PATTERN

Run = Callable[[list[int], int], tuple[float, float]]  # (prompt ids, tokens) -> (prefill s incl. 1st token, decode s)
SHARD_BYTES = 2 << 30


# ---- the same weights in Hugging Face's plain deepseek_v3 form ----
def export_hf(src: Path, dst: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """`src` (any layout, any expert format) as a plain deepseek_v3 folder: every weight dequantized to `dtype`,
    sharded safetensors with an index, `scoring_func: sigmoid` (llama.cpp needs it said), tokenizer.json."""
    if (dst / "config.json").exists():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    ckpt = open_checkpoint(src)
    cfg = HfConfig(ckpt.config, "deepseek_v3", str(dtype).removeprefix("torch."))
    weight_map: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    size, index = 0, 0

    def flush() -> None:
        nonlocal shard, size, index
        if shard:
            index += 1
            name = f"model-{index:05d}.safetensors"
            save_file(shard, dst / name, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
            shard, size = {}, 0

    for _, info in ckpt.all_tensors():
        name = info.name.removeprefix(ckpt.tensor_prefix)
        if not name.startswith(("model.", "lm_head.")):
            continue
        module, _, suffix = name.rpartition(".")
        if suffix in ("weight_scale", "weight_shape", "weight_scale_inv"):
            continue
        if suffix == "weight_packed" or f"{module}.weight_scale_inv" in ckpt:
            name, t = f"{module}.weight", dequantize(ckpt.weight(module), dtype)
        elif name.endswith("e_score_correction_bias"):
            t = ckpt.tensor(name).float().clone()
        else:
            t = ckpt.tensor(name).to(dtype).clone()
        shard[name] = t.contiguous()
        size += t.nbytes
        if size >= SHARD_BYTES:
            flush()
    flush()
    ckpt.close()
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = cfg.to_dict()
    config.update(scoring_func="sigmoid", topk_method="noaux_tc")
    (dst / "config.json").write_text(json.dumps(config, indent=1))
    _export_tokenizer(src, dst)
    return dst


def _export_tokenizer(src: Path, dst: Path) -> None:
    """tiktoken.model -> tokenizer.json (byte-level BPE, Kimi's split pattern) through transformers' converter."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    specials = json.loads((src / "tokenizer_config.json").read_text()).get("added_tokens_decoder", {})
    names = [v["content"] for _, v in sorted(specials.items(), key=lambda kv: int(kv[0]))]
    tok = TikTokenConverter(
        vocab_file=str(src / "tiktoken.model"), pattern=KIMI_PATTERN, additional_special_tokens=names
    ).converted()
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(dst)
    # the converter leaves the specials out of tokenizer.json (transformers 5): add them at their own ids, so that
    # llama.cpp's converter sees [BOS], <|im_end|>, ... as CONTROL tokens where the checkpoint has them
    path = dst / "tokenizer.json"
    spec = json.loads(path.read_text())
    have = {t["id"] for t in spec.get("added_tokens", [])}
    for i, v in sorted(specials.items(), key=lambda kv: int(kv[0])):
        if int(i) not in have:
            spec.setdefault("added_tokens", []).append(
                {
                    "id": int(i),
                    "content": v["content"],
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": True,
                }
            )
    path.write_text(json.dumps(spec, ensure_ascii=False))


# ---- runners: each loads once, then times (prompt, tokens) runs ----
def ours(folder: Path) -> tuple[Run, Callable[[], None], dict[str, Any]]:
    engine = Engine(folder, RuntimeConfig(context=8192, device="cpu"))

    def run(prompt: list[int], n: int) -> tuple[float, float]:
        r = run_once(engine, prompt, n)
        return r.prefill_s, r.decode_s

    return run, engine.close, {"version": _version("kimi-offload"), "expert_format": "INT4 group 32 (as stored)"}


def transformers_peer(hf_dir: Path, offload_gib: float | None) -> tuple[Run, Callable[[], None], dict[str, Any]]:
    from transformers import DeepseekV3ForCausalLM

    kw: dict[str, Any] = {"dtype": torch.bfloat16, "experts_implementation": "batched_mm"}
    folder = None
    if offload_gib is not None:
        folder = tempfile.TemporaryDirectory(prefix="hf-offload-")
        kw.update(device_map="auto", max_memory={"cpu": f"{offload_gib}GiB"}, offload_folder=folder.name)
    model = DeepseekV3ForCausalLM.from_pretrained(hf_dir, **kw).eval()

    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        """Times each step: put() is called with the prompt, then with every new token."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value: torch.Tensor) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    def run(prompt: list[int], n: int) -> tuple[float, float]:
        ids = torch.tensor([prompt])
        clock = Clock()
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
                streamer=clock,
            )
        end = time.perf_counter()
        first = clock.times[1] - t0  # times[0]: the prompt handed over; times[1]: the first new token
        return first, end - clock.times[1]

    def close() -> None:
        nonlocal model
        del model
        gc.collect()
        if folder is not None:
            folder.cleanup()

    info = {"version": _version("transformers"), "expert_format": "bf16 (dequantized)"}
    if offload_gib is not None:
        info.update(accelerate=_version("accelerate"), ram_cap_gib=offload_gib)
    return run, close, info


def llama_peer(gguf: Path, threads: int) -> tuple[Run, Callable[[], None], dict[str, Any]]:
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(gguf), n_ctx=8192, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False
    )

    def run(prompt: list[int], n: int) -> tuple[float, float]:
        llm.reset()
        t0 = time.perf_counter()
        first = 0.0
        for i, _ in enumerate(llm.generate(prompt, top_k=1, temp=0.0, reset=True)):
            if i == 0:
                first = time.perf_counter() - t0
            if i + 1 == n:
                break
        return first, time.perf_counter() - t0 - first

    return (
        run,
        llm.close,
        {"version": _version("llama-cpp-python"), "expert_format": "Q4_0 (all 2-D weights)", "threads": threads},
    )


def convert_gguf(hf_dir: Path, out: Path, llama_src: Path, threads: int) -> Path:
    """HF folder -> bf16 GGUF (llama.cpp's converter) -> Q4_0 GGUF (llama.cpp's quantizer); the bf16 file is
    removed. The converter knows tokenizers by a hash of their output on a test string; our synthetic one is
    unknown to it, so its pre-tokenizer is declared `gpt-2` (it only affects text, not the ids we feed)."""
    if out.exists():
        return out
    import llama_cpp

    bf16 = out.with_suffix(".bf16.gguf")
    script = (
        "import sys; sys.argv = sys.argv[1:]; sys.path.insert(0, sys.argv[0].rsplit('/', 1)[0] + '/gguf-py');"
        "sys.path.insert(0, sys.argv[0].rsplit('/', 1)[0]);"
        "from conversion import base; base.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'gpt-2';"
        "import runpy; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    cmd = [
        sys.executable,
        "-c",
        script,
        str(llama_src / "convert_hf_to_gguf.py"),
        str(hf_dir),
        "--outtype",
        "bf16",
        "--outfile",
        str(bf16),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf failed:\n{proc.stderr[-4000:]}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(bf16).encode(), str(out).encode(), params)
    bf16.unlink(missing_ok=True)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")
    return out


# ---- the comparison ----
def _version(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "source tree" if pkg == "kimi-offload" else "absent"


def _prompt(folder: Path, n: int) -> list[int]:
    from offload.bench.runner import PROSE
    from offload.engine.tokenizer import Tokenizer

    ids = Tokenizer.from_dir(folder).encode(PROSE)
    return (ids * (n // len(ids) + 1))[:n]


def _peers(args: argparse.Namespace, work: Path, threads: int) -> Iterator[tuple[str, Callable[[], tuple]]]:
    wanted = args.peers.split(",")
    hf = work / "hf-bf16"
    if {"transformers", "transformers-offload", "llama.cpp"} & set(wanted):
        yield "export", lambda: (export_hf(args.model, hf),)
    if "transformers" in wanted:
        yield "transformers", lambda: transformers_peer(hf, None)
    if "transformers-offload" in wanted:
        yield (
            f"transformers+accelerate offload ({args.hf_offload_gib:g} GiB cap)",
            lambda: transformers_peer(hf, args.hf_offload_gib),
        )
    if "llama.cpp" in wanted:

        def start_llama() -> tuple:
            gguf = convert_gguf(hf, work / "model-q4_0.gguf", args.llama_src, threads)
            read_files([gguf])
            return llama_peer(gguf, threads)

        yield "llama.cpp", start_llama


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True, help="Folder for the HF export and the GGUF (kept, reused).")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--peers", default="transformers,transformers-offload,llama.cpp")
    ap.add_argument("--hf-offload-gib", type=float, default=4.0)
    ap.add_argument("--llama-src", type=Path, help="llama.cpp source: the llama-cpp-python sdist's vendor/llama.cpp.")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    threads = torch.get_num_threads()
    prompt = _prompt(args.model, args.prompt_len)
    runners: dict[str, tuple[Run, Callable[[], None], dict[str, Any]]] = {}
    skipped: dict[str, str] = {}
    read_files(sorted(args.model.glob("*.safetensors")))
    runners["kimi-offload"] = ours(args.model)
    for name, start in _peers(args, args.work, threads):
        try:
            got = start()
        except ImportError as e:
            skipped[name] = f"not installed ({e.name}): see `python benchmarks/compare.py --help`"
            print(f"skipping {name}: {skipped[name]}", file=sys.stderr)
            continue
        except Exception as e:  # a peer that cannot load this model is reported, not fatal
            skipped[name] = f"failed: {e!r}"[:500]
            print(f"skipping {name}: {skipped[name]}", file=sys.stderr)
            continue
        if name != "export":
            runners[name] = got  # type: ignore[assignment]
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
    for run, _, _ in runners.values():  # warm-up, untimed
        run(prompt[:16], 2)
    for i in range(args.runs):
        for name, (run, _, _) in runners.items():
            times[name].append(run(prompt, args.gen_len))
            pre, dec = times[name][-1]
            print(
                f"run {i + 1} {name}: prefill {len(prompt) / pre:.1f} tok/s, decode "
                f"{(args.gen_len - 1) / dec:.2f} tok/s",
                file=sys.stderr,
            )
    results: dict[str, Any] = {}
    for name, (_, close, info) in runners.items():
        close()
        pre = statistics.median(len(prompt) / p for p, _ in times[name])
        dec = statistics.median((args.gen_len - 1) / d for _, d in times[name])
        results[name] = {
            **info,
            "prefill_tok_s": pre,
            "decode_tok_s": dec,
            "decode_tok_s_runs": [(args.gen_len - 1) / d for _, d in times[name]],
        }
    base = results["kimi-offload"]
    for r in results.values():
        r["decode_ratio_ours_over_this"] = base["decode_tok_s"] / r["decode_tok_s"]
        r["prefill_ratio_ours_over_this"] = base["prefill_tok_s"] / r["prefill_tok_s"]
    out = {
        "model": str(args.model),
        "prompt_len": args.prompt_len,
        "gen_len": args.gen_len,
        "runs": args.runs,
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "results": results,
        "skipped": skipped,
    }
    print(f"{'runtime':48} {'decode tok/s':>13} {'prefill tok/s':>14} {'ours / this (decode)':>21}")
    for name, r in results.items():
        ratio = r["decode_ratio_ours_over_this"]
        print(f"{name:48} {r['decode_tok_s']:13.2f} {r['prefill_tok_s']:14.1f} {ratio:21.2f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
