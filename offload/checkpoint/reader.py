"""The safetensors reader: a checkpoint folder opened from its headers, every shard mapped once, tensors checked
against config.json."""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from kernels.dequant import StoredWeight
from kernels.formats import label
from offload.checkpoint.base import ByteRange, MappedFile, TypeUse, merge_ranges
from offload.checkpoint.layout import FLOAT_TAGS, expert_tensors, layout_storage, model_tensors
from offload.checkpoint.safetensors_file import CheckpointError, SafetensorsFile, TensorInfo
from offload.hf_config import HfConfig

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class SafetensorsCheckpoint:
    """The tensors of a safetensors checkpoint folder, by name, as zero-copy views over the mapped shards
    (implements offload.checkpoint.Checkpoint)."""

    def __init__(self, folder: str | Path, hf: HfConfig | None = None) -> None:
        self.path = self.folder = Path(folder)
        self.hf = hf if hf is not None else HfConfig.from_dir(self.folder)  # config.json: layout, dtype, quantization
        self.config = self.hf.model
        self.layout: str = self.hf.layout
        self.tensor_prefix = self.hf.tensor_prefix
        self.metadata: dict[str, Any] = {}  # config.json and the tokenizer files are in the folder
        self.shards: dict[str, SafetensorsFile] = {}
        self._where: dict[str, tuple[SafetensorsFile, TensorInfo]] = {}
        self.files: dict[str, MappedFile] = {}
        try:
            self._open_shards()
            self._validate()
        except BaseException:
            self.close()
            raise
        self.files.update(self.shards)
        self.storage = layout_storage(self.hf, lambda spec: self._where[spec.name][1].nbytes)

    # ---- opening -------------------------------------------------------------------------------------------
    def _open_shards(self) -> None:
        index_path = self.folder / INDEX_FILE
        if index_path.is_file():
            try:
                index = json.loads(index_path.read_text())
                weight_map: dict[str, str] = index["weight_map"]
                if not isinstance(weight_map, dict) or not all(
                    isinstance(f, str) and f and Path(f).name == f for f in weight_map.values()
                ):
                    raise TypeError("weight_map must map tensor names to shard file names in this folder")
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(
                    f"{index_path} is corrupt: {e!r}; expected an object with a 'weight_map'"
                ) from None
            first_tensor: dict[str, str] = {}
            for name, fname in weight_map.items():
                first_tensor.setdefault(fname, name)
            for fname, name in first_tensor.items():
                if not (self.folder / fname).is_file():
                    raise CheckpointError(
                        f"{index_path} maps tensor {name!r} to shard {fname}, but {self.folder / fname} does not exist "
                        "(incomplete download?)"
                    )
                self.shards[fname] = SafetensorsFile(self.folder / fname)
            for name, fname in weight_map.items():
                shard = self.shards[fname]
                info = shard.tensors.get(name)
                if info is None:
                    raise CheckpointError(f"{index_path} maps tensor {name!r} to {shard.path}, whose header lacks it")
                self._where[name] = (shard, info)
        elif (self.folder / SINGLE_FILE).is_file():
            shard = SafetensorsFile(self.folder / SINGLE_FILE)
            self.shards[SINGLE_FILE] = shard
            self._where = {name: (shard, info) for name, info in shard.tensors.items()}
        else:
            raise CheckpointError(
                f"{self.folder} has neither {INDEX_FILE} nor {SINGLE_FILE}: not a safetensors checkpoint"
            )

    def _validate(self) -> None:
        """Every tensor the config implies is present with its shape and dtype."""
        expected = 0
        for spec in model_tensors(self.hf):
            expected += 1
            found = self._where.get(spec.name)
            if found is None:
                raise CheckpointError(
                    f"tensor {spec.name!r} (shape {list(spec.shape)}, {spec.dtypes[0]}) is required by "
                    f"{self.folder / 'config.json'} but is in no shard of {self.folder}"
                )
            shard, info = found
            if info.shape != spec.shape:
                raise CheckpointError(
                    f"{shard.path}: tensor {spec.name!r} has shape {list(info.shape)}; config.json implies "
                    f"{list(spec.shape)}"
                )
            if info.dtype not in spec.dtypes:
                raise CheckpointError(
                    f"{shard.path}: tensor {spec.name!r} is {info.dtype}; config.json implies "
                    f"{' or '.join(spec.dtypes)}"
                )
        if len(self._where) > expected:
            log.debug("%s: %d tensors outside the text model ignored", self.folder, len(self._where) - expected)

    # ---- access ---------------------------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return self.tensor_prefix + name in self._where

    def info(self, name: str) -> TensorInfo:
        """Where tensor `name` (without the layout prefix, e.g. 'model.norm.weight') lies."""
        return self._lookup(name)[1]

    def tensor(self, name: str) -> torch.Tensor:
        """Zero-copy view of tensor `name` (without the layout prefix); reads nothing until touched."""
        shard, info = self._lookup(name)
        return shard.view(info.name)

    def embedding(self) -> StoredWeight:
        info = self.info("model.embed_tokens.weight")
        if info.dtype not in FLOAT_TAGS:
            raise CheckpointError(f"{self.folder}: the embedding is {info.dtype}; expected BF16, F16 or F32")
        w = self.tensor("model.embed_tokens.weight")
        return StoredWeight(FLOAT_TAGS[info.dtype], (int(w.shape[0]), int(w.shape[1])), {"weight": w})

    def weight(self, module: str) -> StoredWeight:
        """The stored weight of Linear `module`, tagged with its format."""
        t = self.linear(module)
        q = self.hf.quant
        if "weight_packed" in t:
            out_f, in_f = (int(v) for v in t["weight_shape"])
            return StoredWeight(
                "int4", (out_f, in_f), {"packed": t["weight_packed"], "scale": t["weight_scale"]}, (q.group_size,)
            )
        w = t["weight"]
        shape = (int(w.shape[0]), int(w.shape[1]))
        if "weight_scale_inv" in t:
            return StoredWeight("fp8", shape, {"weight": w, "scale_inv": t["weight_scale_inv"]}, q.block)
        info = self._lookup(f"{module}.weight")[1]
        if info.dtype not in FLOAT_TAGS:
            raise CheckpointError(f"{self.folder}: {module}.weight is {info.dtype}; expected BF16, F16 or F32")
        return StoredWeight(FLOAT_TAGS[info.dtype], shape, {"weight": w})

    def linear(self, module: str) -> dict[str, torch.Tensor]:
        """The stored tensors of one Linear, by suffix: {'weight'} or {'weight_packed', 'weight_scale',
        'weight_shape'} or {'weight', 'weight_scale_inv'}."""
        prefix = f"{self.tensor_prefix}{module}."
        out = {}
        for suffix in ("weight", "weight_packed", "weight_scale", "weight_shape", "weight_scale_inv"):
            found = self._where.get(prefix + suffix)
            if found is not None:
                out[suffix] = found[0].view(found[1].name)
        if not out:
            raise CheckpointError(f"{self.folder}: no weights for module {module!r}")
        return out

    def _lookup(self, name: str) -> tuple[SafetensorsFile, TensorInfo]:
        full = self.tensor_prefix + name
        found = self._where.get(full)
        if found is None:
            raise CheckpointError(f"{self.folder}: tensor {full!r} is not in the checkpoint")
        return found

    def all_tensors(self) -> list[tuple[SafetensorsFile, TensorInfo]]:
        """Every tensor in the folder, the text model's and any other (vision tower, MTP layers)."""
        return list(self._where.values())

    def expert_ranges(self, layer: int, expert: int) -> list[ByteRange]:
        """The file byte ranges holding routed expert (layer, expert): its tensors, adjacent ones merged."""
        return merge_ranges(
            (self._where[spec.name][0].path, self._where[spec.name][1].start, self._where[spec.name][1].end)
            for spec in expert_tensors(self.hf, layer, expert)
        )

    def expert_regions(self) -> list[ByteRange]:
        """Maximal runs of routed-expert tensors in each shard (from the headers)."""
        return merge_ranges(
            (shard.path, i.start, i.end)
            for shard in self.shards.values()
            for name, i in shard.tensors.items()
            if ".mlp.experts." in name
        )

    def file(self, path: Path) -> SafetensorsFile:
        return self.shard(path)

    def shard(self, path: Path) -> SafetensorsFile:
        """The open shard at `path` (as named in a ByteRange)."""
        for shard in self.shards.values():
            if shard.path == path:
                return shard
        raise CheckpointError(f"{path} is not a shard of {self.folder}")

    def bytes_by_part(self) -> dict[str, int]:
        """Stored bytes by model part, from the headers; tensors outside the text model count as 'other'."""
        parts: dict[str, int] = defaultdict(int)
        seen = set()
        for spec in model_tensors(self.hf):
            parts[spec.part] += self._where[spec.name][1].nbytes
            seen.add(spec.name)
        for name, (_, info) in self._where.items():
            if name not in seen:
                parts["other"] += info.nbytes
        return dict(parts)

    def types_by_part(self) -> dict[str, dict[str, TypeUse]]:
        """Per model part and stored format ("int4 g32", "fp8 128x128", "bf16", ...): tensors, bytes, weights."""
        out: dict[str, dict[str, TypeUse]] = defaultdict(dict)
        q = self.hf.quant
        int4, fp8 = label("int4", (q.group_size,)), label("fp8", q.block)
        for spec in model_tensors(self.hf):
            info = self._where[spec.name][1]
            if spec.role in ("weight_packed", "weight_scale", "weight_shape"):
                fmt = int4
            elif spec.role == "weight_scale_inv" or (spec.role == "weight" and info.dtype == "F8_E4M3"):
                fmt = fp8
            else:
                fmt = FLOAT_TAGS.get(info.dtype, info.dtype.lower())
            counts = spec.role in ("weight", "weight_packed", "norm", "bias", "embed")
            weights = spec.fan_in * spec.fan_out if spec.role == "weight_packed" else math.prod(spec.shape)
            was = out[spec.part].get(fmt, TypeUse())
            out[spec.part][fmt] = was.add(info.nbytes, weights if counts else 0, 1)
        return dict(out)

    def close(self) -> None:
        self._where.clear()
        for shard in self.shards.values():
            shard.close()
        self.shards.clear()
        self.files.clear()

    def __enter__(self) -> SafetensorsCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
