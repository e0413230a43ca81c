"""The GGUF reader: one `.gguf` file, any part of a split set (`NAME-00001-of-00005.gguf`, every part found and its
`split.*` keys checked), or a folder holding one set. Implements offload.checkpoint.Checkpoint over the same model
names as the safetensors reader; every tensor's type comes from its header, never from a file name.

Routed experts are stacked per layer (`ffn_{gate,up,down}_exps`, expert the slowest axis; or a fused
`ffn_gate_up_exps`): expert e of a stacked tensor is one contiguous byte range, handed out as a zero-copy view, so the
store's RAM budget, prefetch and eviction work as for safetensors. `kv_b_proj` is read from `attn_kv_b`, or rebuilt
from llama.cpp's per-head `attn_k_b` (transposed) and `attn_v_b`.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from kernels.dequant import StoredWeight, dequantize
from kernels.formats import FLOAT_FORMATS, FORMATS, GGML_BLOCKS
from offload.checkpoint.base import ByteRange, MappedFile, TypeUse, merge_ranges
from offload.checkpoint.gguf_config import config_from_gguf
from offload.checkpoint.gguf_file import GgufFile, GgufTensor
from offload.checkpoint.gguf_names import FUSED_GATE_UP, K_B, STACKED, V_B, expert_of, gguf_name, gguf_tensors
from offload.checkpoint.safetensors_file import CheckpointError, TensorInfo
from offload.config import PARTS, ModelConfig
from offload.storage import Storage

log = logging.getLogger(__name__)

SPLIT_RE = re.compile(r"(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf")
PROJS = ("gate_proj", "up_proj", "down_proj")


def gguf_files(path: Path) -> list[Path]:
    """The files of the GGUF set at `path` (a file, any part of a split set, or a folder with one set), in order."""
    if path.is_dir():
        found = sorted(p for p in path.glob("*.gguf") if not p.name.lower().startswith("mmproj"))
        if not found:
            raise CheckpointError(f"{path} holds no .gguf file")
        sets = {SPLIT_RE.fullmatch(p.name).group("stem") if SPLIT_RE.fullmatch(p.name) else p.stem for p in found}  # type: ignore[union-attr]
        if len(sets) > 1:
            raise CheckpointError(
                f"{path} holds {len(sets)} GGUF sets ({', '.join(sorted(sets))}); pass --model with one file of "
                "the set you want"
            )
        path = found[0]
    m = SPLIT_RE.fullmatch(path.name)
    if m is None:
        return [path]
    count = int(m.group("count"))
    parts = [path.with_name(f"{m.group('stem')}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise CheckpointError(
            f"{path.parent}: the split set {m.group('stem')} has {count} parts, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing (incomplete download?)"
        )
    return parts


class GgufCheckpoint:
    """A GGUF file or split set (implements offload.checkpoint.Checkpoint)."""

    layout = "gguf"
    tensor_prefix = ""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.shards: list[GgufFile] = []
        self.files: dict[str, MappedFile] = {}
        self._where: dict[str, tuple[GgufFile, GgufTensor]] = {}
        try:
            for p in gguf_files(self.path):
                self.shards.append(GgufFile(p))
            self.metadata: dict[str, Any] = dict(self.shards[0].metadata)
            self._check_split()
            for f in self.shards:
                for name, t in f.tensors.items():
                    if name in self._where:
                        raise CheckpointError(f"tensor {name!r} is in both {self._where[name][0].path} and {f.path}")
                    self._where[name] = (f, t)
            cfg = config_from_gguf(self.metadata, str(self.shards[0].path))
            if "output.weight" not in self._where:
                cfg = replace(cfg, tie_word_embeddings=True)
            self.config: ModelConfig = cfg
            self._fused = f"blk.{cfg.moe_layers[0]}.{FUSED_GATE_UP}" in self._where if len(cfg.moe_layers) else False
            self._validate()
        except BaseException:
            self.close()
            raise
        self.files.update({f.path.name: f for f in self.shards})
        self.storage = self._storage()

    # ---- opening ---------------------------------------------------------------------------------------------
    def _check_split(self) -> None:
        if len(self.shards) == 1 and "split.count" not in self.metadata:
            return
        total = 0
        for i, f in enumerate(self.shards):
            no, count = f.metadata.get("split.no"), f.metadata.get("split.count")
            if count != len(self.shards) or no != i:
                raise CheckpointError(
                    f"{f.path}: split.no = {no!r}, split.count = {count!r}; as part {i + 1} of {len(self.shards)} "
                    f"it should say {i} and {len(self.shards)} (a part of another set?)"
                )
            total += len(f.tensors)
        want = self.metadata.get("split.tensors.count")
        if want is not None and want != total:
            raise CheckpointError(
                f"{self.shards[0].path}: split.tensors.count = {want} but the {len(self.shards)} parts hold {total}"
            )

    def _validate(self) -> None:
        """Every tensor the metadata implies is present, with its shape and a type this runtime reads."""
        first = self.shards[0].path
        self._part: dict[str, str] = {}
        split_kv_b = f"blk.0.{K_B}" in self._where  # llama.cpp's per-head form (files since 2025), else attn_kv_b
        for name, shape, part, _ in gguf_tensors(self.config, split_kv_b, self._fused):
            self._part[name] = part
            found = self._where.get(name)
            if found is None:
                raise CheckpointError(
                    f"tensor {name!r} (shape {list(shape)}) is required by the metadata of {first} but is in no "
                    f"part of {self.path}"
                )
            f, t = found
            if t.shape != tuple(shape):
                raise CheckpointError(
                    f"{f.path}: tensor {name!r} has shape {list(t.shape)} (ne {list(t.ne)}); the metadata implies "
                    f"{list(shape)}"
                )
            if _tag(t) not in FORMATS:
                raise CheckpointError(
                    f"{f.path}: tensor {name!r} is {t.type_name}, a ggml type this runtime cannot dequantize yet"
                )

    def _storage(self) -> Storage:
        """Bytes as stored; GGUF mixes types by tensor, so expert_bytes is the mean routed expert and
        expert_formats lists the experts' types, most bytes first."""
        cfg = self.config
        parts = dict.fromkeys((p for p in PARTS if p != "routed_experts"), 0)
        for name, part in self._part.items():
            if part != "routed_experts":
                parts[part] += self._nbytes(name)
        routed = [t for name, (_, t) in self._where.items() if self._part.get(name) == "routed_experts"]
        n = max(1, cfg.n_routed_experts * len(cfg.moe_layers))
        by_fmt: Counter[str] = Counter()
        for t in routed:
            by_fmt[_tag(t)] += t.end - t.start
        fmts = tuple(f for f, _ in by_fmt.most_common())
        mean = sum(t.end - t.start for t in routed) // n
        embed = self._where["token_embd.weight"][1]
        skip = ("routed_experts", "embed", "router", "norms")
        kept = {  # the parts whose Linears the CPU keeps in their ggml types (kv_b's halves and the router aside)
            self._part[name]
            for name, (_, t) in self._where.items()
            if self._part.get(name, "embed") not in skip and _tag(t) in GGML_BLOCKS and not name.endswith((K_B, V_B))
        }
        return Storage(
            expert_format=fmts[0] if fmts else "f32",
            expert_params=(),
            expert_bytes=mean,
            expert_weight_bytes=mean,
            part_bytes=parts,
            float_format=_tag(embed),  # a quantized embedding is dequantized at load (see tensor())
            expert_formats=fmts,
            ggml_parts=frozenset(kept),
        )

    def _nbytes(self, gname: str) -> int:
        t = self._where[gname][1]
        return t.end - t.start

    # ---- access ----------------------------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        g = gguf_name(name)
        return g is not None and g in self._where

    def _lookup(self, name: str) -> tuple[GgufFile, GgufTensor]:
        g = gguf_name(name)
        found = None if g is None else self._where.get(g)
        if found is None:
            raise CheckpointError(f"{self.path}: no tensor for {name!r} (GGUF name {g!r})")
        return found

    def info(self, name: str) -> TensorInfo:
        return self._lookup(name)[1].info

    def tensor(self, name: str) -> torch.Tensor:
        """A plain tensor (norm, router, bias, embedding): a zero-copy view when stored as a float type; a quantized
        one is dequantized to float32, a copy (the embedding has embedding(), which stays as stored)."""
        return self._read(*self._lookup(name))

    def _read(self, f: GgufFile, t: GgufTensor) -> torch.Tensor:
        if _tag(t) in FLOAT_FORMATS:
            return f.view(t.name)
        data = f.raw(t.name)  # [rows, row_bytes]
        w = StoredWeight(_tag(t), (int(data.shape[0]), t.ne[0]), {"data": data})
        return dequantize(w, torch.float32).view(t.shape)

    def embedding(self) -> StoredWeight:
        """token_embd as stored: quantized rows are dequantized when looked up (a K2.5 Q4_K embedding stays 0.6 GB)."""
        f, t = self._where["token_embd.weight"]
        return self._stored(f, t, t.shape[0], t.shape[1], 0)

    def weight(self, module: str) -> StoredWeight:
        """The stored weight of Linear `module` (zero-copy; kv_b_proj rebuilt from attn_k_b / attn_v_b is float32)."""
        ex = expert_of(module)
        if ex is not None:
            return self._expert_weight(*ex)
        if module.endswith("self_attn.kv_b_proj"):
            layer = module.split(".")[2]
            if f"blk.{layer}.{K_B}" in self._where:
                return self._kv_b(layer)
        f, t = self._lookup(module)
        return self._stored(f, t, t.shape[0], t.shape[1], 0)

    def _stored(self, f: GgufFile, t: GgufTensor, out_f: int, in_f: int, row0: int) -> StoredWeight:
        """Rows row0 .. row0 + out_f of `t` (each `in_f` wide) as a StoredWeight, zero-copy."""
        tag = _tag(t)
        if tag in FLOAT_FORMATS:
            flat = f.view(t.name).reshape(-1, in_f)
            return StoredWeight(tag, (out_f, in_f), {"weight": flat[row0 : row0 + out_f]})
        return StoredWeight(tag, (out_f, in_f), {"data": f.raw(t.name)[row0 : row0 + out_f]})

    def _expert_weight(self, layer: int, expert: int, proj: str) -> StoredWeight:
        cfg = self.config
        inter, h = cfg.moe_intermediate_size, cfg.hidden_size
        if proj != "down_proj" and self._fused:
            f, t = self._where[f"blk.{layer}.{FUSED_GATE_UP}"]
            row0 = expert * 2 * inter + (inter if proj == "up_proj" else 0)
            return self._stored(f, t, inter, h, row0)
        f, t = self._where[f"blk.{layer}.{STACKED[proj]}"]
        out_f, in_f = (h, inter) if proj == "down_proj" else (inter, h)
        return self._stored(f, t, out_f, in_f, expert * out_f)

    def _kv_b(self, layer: str) -> StoredWeight:
        """kv_b_proj [n * (nope + v), kv_lora] from attn_k_b [n, kv_lora, nope] (k_nope rows, transposed) and
        attn_v_b [n, v, kv_lora]: per head, the k_nope rows then the v rows."""
        cfg = self.config
        k_b = self._read(*self._where[f"blk.{layer}.{K_B}"]).float()
        v_b = self._read(*self._where[f"blk.{layer}.{V_B}"]).float()
        kv_b = torch.cat([k_b.transpose(1, 2), v_b], dim=1).reshape(-1, cfg.kv_lora_rank)
        return StoredWeight("f32", (int(kv_b.shape[0]), cfg.kv_lora_rank), {"weight": kv_b})

    def all_tensors(self) -> list[tuple[GgufFile, TensorInfo]]:
        return [(f, t.info) for f, t in self._where.values()]

    def expert_ranges(self, layer: int, expert: int) -> list[ByteRange]:
        """Expert (layer, expert)'s rows of each stacked tensor: one contiguous run per tensor."""
        spans = []
        names = [FUSED_GATE_UP, STACKED["down_proj"]] if self._fused else [STACKED[p] for p in PROJS]
        for n in names:
            f, t = self._where[f"blk.{layer}.{n}"]
            per = (t.end - t.start) // self.config.n_routed_experts
            spans.append((f.path, t.start + expert * per, t.start + (expert + 1) * per))
        return merge_ranges(spans)

    def expert_regions(self) -> list[ByteRange]:
        return merge_ranges(
            (f.path, t.start, t.end) for name, (f, t) in self._where.items() if self._part.get(name) == "routed_experts"
        )

    def file(self, path: Path) -> GgufFile:
        for f in self.shards:
            if f.path == path:
                return f
        raise CheckpointError(f"{path} is not a part of {self.path}")

    def bytes_by_part(self) -> dict[str, int]:
        """Stored bytes by model part; tensors outside the text model count as 'other'."""
        parts: dict[str, int] = defaultdict(int)
        for name, (_, t) in self._where.items():
            parts[self._part.get(name, "other")] += t.end - t.start
        return dict(parts)

    def types_by_part(self) -> dict[str, dict[str, TypeUse]]:
        """Per model part and stored type: tensors, bytes and weights (bits per weight = 8 * bytes / weights)."""
        out: dict[str, dict[str, TypeUse]] = defaultdict(dict)
        for name, (_, t) in self._where.items():
            part = self._part.get(name, "other")
            was = out[part].get(t.type_name, TypeUse())
            out[part][t.type_name] = was.add(t.end - t.start, math.prod(t.ne))
        return dict(out)

    def close(self) -> None:
        self._where.clear()
        for f in self.shards:
            f.close()
        self.shards.clear()
        self.files.clear()

    def __enter__(self) -> GgufCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tag(t: GgufTensor) -> str:
    """The kernels.formats tag of a GGUF tensor's type: the type name in lower case ("q4_k", "f32", "bf16")."""
    return t.type_name.lower()
