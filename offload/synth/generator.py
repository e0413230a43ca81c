"""Writing a complete synthetic checkpoint folder in the published layout, streaming, shard by shard."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from offload.checkpoint.layout import TensorSpec, model_tensors
from offload.checkpoint.reader import INDEX_FILE
from offload.checkpoint.writer import Entry, write_shard
from offload.hf_config import HfConfig
from offload.synth.tokenizer import NUM_SPECIAL, train_bpe, write_tokenizer
from offload.synth.weights import draw

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SynthOptions:
    """How to draw and shard a synthetic checkpoint."""

    seed: int = 0
    skew: float = 0.0  # std of the extra router bias per expert: 0 = balanced, 0.05+ = some experts favoured
    max_shard_bytes: int = 1 << 30
    write_data: bool = True  # False: header-only sparse shards and no tokenizer (a replica of a real download's
    # headers, for tests on real shapes such as K2.5's 595 GB)

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed = {self.seed}; expected 0 or more")
        if self.max_shard_bytes <= 0:
            raise ValueError(f"max_shard_bytes = {self.max_shard_bytes}; expected a positive size")


def vision_extras(hf: HfConfig) -> list[TensorSpec]:
    """A token vision tower and projector, so a K2.5-layout folder holds tensors a text runtime must skip."""
    if hf.layout != "kimi_k25":
        return []
    cfg, dt = hf.model, (hf.safetensors_dtype,)
    return [
        TensorSpec(
            "vision_tower.patch_embed.proj.weight",
            (8, 3, 14, 14),
            dt,
            "other",
            "vision_tower.patch_embed.proj",
            "weight",
            3 * 14 * 14,
            8,
        ),
        TensorSpec(
            "mm_projector.proj.0.weight",
            (cfg.hidden_size, 8),
            dt,
            "other",
            "mm_projector.proj.0",
            "weight",
            8,
            cfg.hidden_size,
        ),
    ]


def plan_shards(specs: list[TensorSpec], max_bytes: int) -> list[list[TensorSpec]]:
    """Consecutive runs of tensors (forward order) of at most max_bytes each, an oversized tensor alone."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        n = Entry(spec.name, spec.dtypes[0], spec.shape).nbytes
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += n
    return shards


def write_model(
    hf: HfConfig,
    out: Path,
    options: SynthOptions = SynthOptions(),
    on_bytes: Callable[[int], None] | None = None,
    vocab: tuple[bytes, ...] | None = None,
    fill: Callable[[TensorSpec], np.ndarray] | None = None,
) -> Path:
    """Write config.json, sharded safetensors with their index, and a Kimi-format tokenizer into `out`.

    `vocab` (token bytes in rank order) and `fill` (a tensor's stored bytes) replace the tokenizer trained on the
    built-in corpus and the drawn weights: how a trained model is written (scripts/train_demo.py).
    Writes into `out` + '.partial' and renames at the end, so an interrupted run never leaves a folder that looks
    complete. Refuses to touch an existing non-empty `out`."""
    out, cfg = Path(out), hf.model
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or remove it first")
    if vocab is None:
        vocab = train_bpe(cfg.vocab_size - NUM_SPECIAL) if options.write_data else ()
    if options.write_data and len(vocab) + NUM_SPECIAL != cfg.vocab_size:
        raise ValueError(
            f"the tokenizer corpus yields {len(vocab)} base tokens but the config has vocab_size {cfg.vocab_size} "
            f"({cfg.vocab_size - NUM_SPECIAL} + {NUM_SPECIAL} specials)"
        )
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    specs = list(model_tensors(hf)) + vision_extras(hf)
    shards = plan_shards(specs, options.max_shard_bytes)
    weight_map: dict[str, str] = {}
    total = 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        by_name = {s.name: s for s in shard}
        entries = [Entry(s.name, s.dtypes[0], s.shape) for s in shard]

        def data(e: Entry, by_name: dict[str, TensorSpec] = by_name) -> np.ndarray:
            spec = by_name[e.name]
            return fill(spec) if fill is not None else draw(cfg, spec, options.seed, options.skew)

        write_shard(tmp / fname, entries, data if options.write_data else None, on_bytes)
        total += sum(e.nbytes for e in entries)
        weight_map.update({s.name: fname for s in shard})
        log.info("wrote %s (%d tensors)", fname, len(shard))

    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    (tmp / "config.json").write_text(json.dumps(hf.to_dict(), indent=2) + "\n")
    gen = {
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": list(cfg.eos_token_ids),
        "do_sample": True,
        "temperature": 1.0,
        "top_p": 0.95,
    }
    (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    if options.write_data:
        write_tokenizer(tmp, vocab)
    synth = {"generator": "kimi-offload make-model", "seed": options.seed, "skew": options.skew}
    (tmp / "synthetic.json").write_text(json.dumps(synth, indent=2) + "\n")
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


def data_bytes(hf: HfConfig) -> int:
    """Tensor bytes write_model will write (the index's total_size)."""
    return sum(Entry(s.name, s.dtypes[0], s.shape).nbytes for s in list(model_tensors(hf)) + vision_extras(hf))
