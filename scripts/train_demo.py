"""Train the built-in demo model: Kimi K2.5's topology, small, on Python's own documentation, shaped as chat turns.

    python scripts/train_demo.py --out DIR [--minutes 45] [--seed 0]

Data: the documentation topics in the standard library's `pydoc_data` and the docstrings of a fixed list of
standard modules, as Kimi chat turns ("Explain TOPIC." -> the text, then <|im_end|>), half of them with thinking
on (an empty <think></think>), so the chat format and the stop token are learned. 5% of the turns, chosen by a
hash of their title, are held out. The tokenizer is a byte-level BPE trained by the project on the same text, in
Kimi's format. The model trains in float32 with transformers' DeepseekV3ForCausalLM (a test-time dependency of the
project), its router's `e_score_correction_bias` moved DeepSeek-V3's auxiliary-loss-free way (each step, towards
the mean load), and is written as a K2.5 checkpoint: nested layout, routed experts INT4 group 32 pack-quantized.
It prints the loss curve and the held-out loss, and writes `training.json` (the curve, the held-out ids the test
uses and the float model's loss on them) beside the checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import math
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kernels.int4 import quantize_int4
from offload.checkpoint.layout import TensorSpec
from offload.config import ModelConfig, RopeScaling
from offload.hf_config import HfConfig
from offload.engine.chat_format import ChatFormat
from offload.engine.tokenizer import Tokenizer
from offload.quant import KIMI_INT4_IGNORE, QuantConfig
from offload.synth.generator import SynthOptions, write_model
from offload.synth.tokenizer import NUM_SPECIAL, train_bpe, write_tokenizer
from offload.synth.weights import draw

MODULES = (
    "abc argparse array ast asyncio base64 bisect calendar cmath codecs collections colorsys configparser "
    "contextlib copy csv dataclasses datetime decimal difflib doctest email enum fnmatch fractions functools gc "
    "getopt gettext glob graphlib gzip hashlib heapq hmac html http inspect io ipaddress itertools json keyword "
    "linecache locale logging lzma math mimetypes numbers operator os pathlib pickle platform pprint queue random re "
    "reprlib sched secrets selectors shelve shlex shutil signal socket sqlite3 statistics string struct subprocess "
    "tarfile tempfile textwrap threading time timeit tokenize traceback types typing unicodedata unittest urllib "
    "uuid warnings weakref zipfile zlib"
).split()
BASE_TOKENS = 2048
MAX_TOKENS = 512  # tokens per training sequence (turns are cut into parts of about 1000 characters first)


def corpus() -> list[tuple[str, str]]:
    """(title, text) pairs: pydoc topics, then module and public-object docstrings; deterministic order."""
    from pydoc_data.topics import topics

    out = [(name, text.strip()) for name, text in sorted(topics.items())]
    for mod_name in MODULES:
        mod = importlib.import_module(mod_name)
        if mod.__doc__:
            out.append((mod_name, inspect.cleandoc(mod.__doc__)))
        for attr in sorted(getattr(mod, "__all__", None) or dir(mod)):
            obj = getattr(mod, attr, None)
            if attr.startswith("_") or obj is None or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 80:
                out.append((f"{mod_name}.{attr}", doc))
    first: dict[str, str] = {}
    for title, doc in out:
        first.setdefault(title, doc)  # a name seen twice (re-exported) keeps its first text
    return list(first.items())


def chunks(pairs: list[tuple[str, str]], size: int = 1000) -> list[tuple[str, str]]:
    """Long texts cut at paragraph breaks into parts of about `size` characters; later parts are asked for as
    continuations."""
    out = []
    for title, text in pairs:
        parts, cur = [], ""
        for para in text.split("\n\n"):
            if cur and len(cur) + len(para) > size:
                parts.append(cur)
                cur = ""
            cur = f"{cur}\n\n{para}" if cur else para
        parts.append(cur)
        for k, part in enumerate(parts):
            out.append((title if k == 0 else f"{title}, part {k + 1}", part))
    return out


def question(title: str) -> str:
    base, _, part = title.partition(", part ")
    return f"Explain {base}." if not part else f"Continue explaining {base} (part {part})."


def held_out(title: str) -> bool:
    return hashlib.sha256(title.encode()).digest()[0] < 13  # about 5%


def model_config(vocab: int) -> HfConfig:
    """Kimi K2.5's topology, small: first layer dense, 64 routed experts top-4 plus a shared one, MLA, YaRN; stored
    as the K2.5 release is (nested layout, bf16, INT4 routed experts)."""
    model = ModelConfig(
        vocab_size=vocab, hidden_size=256, intermediate_size=768, moe_intermediate_size=128,
        num_hidden_layers=6, num_attention_heads=4, q_lora_rank=128, kv_lora_rank=64, qk_nope_head_dim=32,
        qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=64, n_shared_experts=1, num_experts_per_tok=4,
        first_k_dense_replace=1, n_group=1, topk_group=1, norm_topk_prob=True, routed_scaling_factor=2.5,
        max_position_embeddings=8192, rope_theta=50000.0,
        rope_scaling=RopeScaling(factor=4.0, original_max_position_embeddings=2048, beta_fast=32.0, beta_slow=1.0,
                                 mscale=1.0, mscale_all_dim=1.0),
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=vocab - NUM_SPECIAL,
        eos_token_ids=(vocab - NUM_SPECIAL + 1,),
    )
    return HfConfig(model, "kimi_k25", "bfloat16", QuantConfig(format="int4", group_size=32, ignore=KIMI_INT4_IGNORE))


def encode_turns(pairs: list[tuple[str, str]], fmt: ChatFormat, tok: Tokenizer,
                 im_end: int) -> list[tuple[list[int], int]]:
    """(ids, where the answer starts) per turn; thinking on for every other turn."""
    out = []
    for i, (title, text) in enumerate(pairs):
        prompt = fmt.encode([{"role": "user", "content": question(title)}], thinking=i % 2 == 1)
        answer = ([tok.encode_with_specials("</think>")[0]] if i % 2 == 1 else []) + tok.encode(text) + [im_end]
        ids = (prompt + answer)[:MAX_TOKENS]
        out.append((ids, len(prompt)))
    return out


def batches(turns: list[tuple[list[int], int]], size: int, rng: random.Random, pad: int):
    """Endless shuffled batches: ids [B, S], labels [B, S] (-100 outside the answers and on padding)."""
    while True:
        order = list(range(len(turns)))
        rng.shuffle(order)
        for i in range(0, len(order) - size + 1, size):
            chunk = [turns[j] for j in order[i : i + size]]
            yield collate(chunk, pad)


def collate(chunk: list[tuple[list[int], int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _ in chunk)
    ids = torch.full((len(chunk), width), pad)
    labels = torch.full((len(chunk), width), -100)
    for row, (seq, start) in enumerate(chunk):
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, start : len(seq)] = torch.tensor(seq[start:])
    return ids, labels


def loss_of(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """(summed next-token cross-entropy over answer tokens, their count)."""
    shift = logits[:, :-1].float()
    target = labels[:, 1:]
    n = int((target != -100).sum())
    return float(F.cross_entropy(shift.reshape(-1, shift.shape[-1]), target.reshape(-1), ignore_index=-100,
                                 reduction="sum")), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=45.0, help="Training time budget (evaluation not included).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args()
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    torch.manual_seed(args.seed)
    t_start = time.time()
    pairs = chunks(corpus())
    train_pairs = [p for p in pairs if not held_out(p[0].partition(", part ")[0])]
    eval_pairs = [p for p in pairs if held_out(p[0].partition(", part ")[0])]
    text = "\n\n".join(d for _, d in train_pairs)
    print(f"corpus: {len(pairs)} turns ({len(eval_pairs)} held out), {len(text):,} characters of training text")
    t0 = time.time()
    vocab = train_bpe(BASE_TOKENS, text[:400_000])
    print(f"tokenizer: {len(vocab)} base tokens trained in {time.time() - t0:.0f} s")
    cfg = model_config(len(vocab) + NUM_SPECIAL)
    with tempfile.TemporaryDirectory() as tok_dir:  # the checkpoint writes its own copy at the end
        write_tokenizer(Path(tok_dir), vocab)
        tok = Tokenizer.from_dir(tok_dir)
        fmt = ChatFormat.from_dir(tok_dir, tok)
    im_end = tok.encode_with_specials("<|im_end|>")[0]
    pad = cfg.model.vocab_size - 1
    train = encode_turns(train_pairs, fmt, tok, im_end)
    evals = encode_turns(eval_pairs, fmt, tok, im_end)
    print(f"tokens: {sum(len(i) for i, _ in train):,} train, {sum(len(i) for i, _ in evals):,} held out")

    hf_cfg = DeepseekV3Config(**HfConfig(cfg.model, "deepseek_v3", "float32").to_dict())
    model = DeepseekV3ForCausalLM._from_config(hf_cfg, experts_implementation="eager", dtype=torch.float32)
    model.train()
    gates = [layer.mlp.gate for layer in model.model.layers if hasattr(layer.mlp, "gate")]
    loads = [torch.zeros(cfg.model.n_routed_experts) for _ in gates]

    def count(i: int):
        def hook(module: torch.nn.Module, inputs: object, output: tuple[torch.Tensor, ...]) -> None:
            loads[i] += torch.bincount(output[2].reshape(-1), minlength=cfg.model.n_routed_experts).float()

        return hook

    for i, g in enumerate(gates):
        g.register_forward_hook(count(i))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    budget = args.minutes * 60
    warmup = 50
    rng = random.Random(args.seed)
    curve: list[tuple[int, float, float]] = []
    step, t_train, running = 0, time.time(), None
    for ids, labels in batches(train, args.batch, rng, pad):
        elapsed = time.time() - t_train
        if elapsed > budget:
            break
        progress = elapsed / budget
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in opt.param_groups:
            group["lr"] = lr
        out = model(input_ids=ids, labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():  # auxiliary-loss-free balancing: nudge each expert's bias towards the mean load
            for g, load in zip(gates, loads, strict=True):
                g.e_score_correction_bias += 1e-3 * torch.sign(load.mean() - load)
                load.zero_()
        value = out.loss.item()
        running = value if running is None else 0.98 * running + 0.02 * value
        step += 1
        if step % 25 == 0:
            curve.append((step, round(time.time() - t_train, 1), round(running, 4)))
            print(f"step {step:5d}  {elapsed / 60:5.1f} min  lr {lr:.2e}  loss {running:.3f}", flush=True)
    print(f"trained {step} steps in {(time.time() - t_train) / 60:.1f} min")

    model.eval()
    total, n = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(evals), 8):
            ids, labels = collate(evals[i : i + 8], pad)
            s, k = loss_of(model(input_ids=ids).logits, labels)
            total, n = total + s, n + k
    held = total / n
    print(f"held-out loss (float32 model): {held:.4f} over {n:,} answer tokens")
    subset = evals[:24]
    s_total, s_n = 0.0, 0
    with torch.inference_mode():
        for ids_, start in subset:
            ids, labels = collate([(ids_, start)], pad)
            s, k = loss_of(model(input_ids=ids).logits, labels)
            s_total, s_n = s_total + s, s_n + k

    state = {k: v.detach() for k, v in model.state_dict().items()}
    write_checkpoint(cfg, state, vocab, args.out)
    (args.out / "training.json").write_text(json.dumps({
        "steps": step, "train_minutes": round((time.time() - t_train) / 60, 2),
        "total_minutes": round((time.time() - t_start) / 60, 2), "batch": args.batch, "lr": args.lr,
        "seed": args.seed, "turns": len(pairs), "held_out_turns": len(eval_pairs),
        "held_out_loss_float": held, "held_out_tokens": n, "curve": curve,
        "test_subset": {"ids": [ids for ids, _ in subset], "starts": [s for _, s in subset],
                        "loss_float": s_total / s_n, "tokens": s_n},
    }, indent=1))
    print(f"wrote {args.out}; held-out loss {held:.4f}; subset loss {s_total / s_n:.4f}")


def write_checkpoint(cfg: HfConfig, state: dict[str, torch.Tensor], vocab: tuple[bytes, ...], out: Path) -> None:
    """The trained weights as a K2.5 checkpoint: experts INT4 pack-quantized (group 32), the rest bf16."""
    inter = cfg.model.moe_intermediate_size
    experts: dict[str, dict[str, np.ndarray]] = {}

    def expert(spec: TensorSpec) -> dict[str, np.ndarray]:
        module = spec.module
        if module not in experts:
            proj = module.rsplit(".", 1)[1]
            fused = f"model.layers.{spec.layer}.mlp.experts."
            gate_up, down = state[fused + "gate_up_proj"][spec.expert], state[fused + "down_proj"][spec.expert]
            w = {"gate_proj": gate_up[:inter], "up_proj": gate_up[inter:], "down_proj": down}[proj]
            packed, scale = quantize_int4(w.float().contiguous())
            experts[module] = {
                "weight_packed": packed.numpy(),
                "weight_scale": scale.to(torch.bfloat16).contiguous().view(torch.uint8).numpy(),
                "weight_shape": np.array([w.shape[0], w.shape[1]], dtype=np.int32),
            }
        return experts[module]

    def fill(spec: TensorSpec) -> np.ndarray:
        if spec.expert is not None:
            return expert(spec)[spec.role]
        name = spec.name.removeprefix(cfg.tensor_prefix)
        if name not in state:  # K2.5's vision tower placeholders: not part of the text model
            return draw(cfg.model, spec, 0)
        t = state[name]
        if spec.role == "bias":
            return t.float().numpy()
        return t.to(torch.bfloat16).contiguous().view(torch.uint8).numpy()

    write_model(cfg, out, SynthOptions(max_shard_bytes=64 << 20), vocab=vocab, fill=fill)
    (out / "synthetic.json").write_text(json.dumps({"generator": "scripts/train_demo.py", "trained": True}) + "\n")


if __name__ == "__main__":
    main()
