"""Routed experts computed on the CPU where they sit: straight from the mapped checkpoint, nothing copied.

INT4 group-32 checkpoints (K2.5) go through the native INT4 kernel on the packed layout in place (a decode token
below float32 with int8 activations, `int4_grouped_ffn_q8_cpu`; prompts with float ones), GGUF experts
(every ggml type) through the native ggml kernel on the file's blocks in place, with int8 activations; both take
a whole layer's CPU experts in one call. Other formats, `--dtype float32` on GGUF experts (whose results must match
the float reference exactly), or a machine where the kernels cannot be built, dequantize each expert and multiply.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

import torch

from kernels import cpu_ggml
from kernels.cpu_int4 import Int4Expert, int4_grouped_ffn_cpu, int4_grouped_ffn_q8_cpu, native_build
from kernels.cpu_int4 import check_expert as check_int4_expert
from kernels.dequant import dequantize
from kernels.ffn import grouped_ffn
from kernels.formats import GGML_BLOCKS
from offload.checkpoint import Checkpoint
from offload.parts import expert_module

log = logging.getLogger(__name__)
PROJS = ("gate_proj", "up_proj", "down_proj")


class CpuExecutor:
    """Computes any subset of a layer's routed experts on the CPU, reading their weights from the mapping."""

    def __init__(self, ckpt: Checkpoint, dtype: torch.dtype = torch.bfloat16, native: bool | None = None) -> None:
        """native: use the INT4 CPU kernel (None: when the checkpoint's experts are INT4 group 32 and it builds)."""
        self.ckpt = ckpt
        self.dtype = dtype
        self.fused = ckpt.storage.fused_experts  # INT4 group 32: the native kernel and GPU slots read it in place
        ggml = ckpt.storage.expert_format in GGML_BLOCKS and dtype != torch.float32
        if native and not (self.fused or ggml):
            raise ValueError(
                f"the native kernels read INT4 group-32 or ggml-typed experts at a dtype below float32; this "
                f"checkpoint stores {ckpt.storage.expert_label} and the dtype is {dtype}"
            )
        self.native = bool(self.fused and native is not False and native_build() is not None)
        self.native_ggml = bool(ggml and native is not False and cpu_ggml.native_build() is not None)
        self._views: dict[tuple[int, int], Int4Expert] = {}
        self._stored: dict[tuple[int, int], cpu_ggml.GgmlExpert | cpu_ggml.CheckedExpert] = {}
        self._pointers: dict[tuple[int, int], tuple[int, ...]] = {}
        log.info(
            "CPU experts: %s",
            "native INT4 kernel"
            if self.native
            else "native ggml kernel (int8 activations)"
            if self.native_ggml
            else "dequantize and multiply",
        )

    def weights(self, layer: int, expert: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gate [I, D], up [I, D], down [D, I]) in the compute dtype."""
        gate, up, down = (dequantize(self.ckpt.weight(expert_module(layer, expert, p)), self.dtype) for p in PROJS)
        return gate, up, down

    def packed(self, layer: int, expert: int) -> Int4Expert:
        """((packed, scale) of gate, up, down): zero-copy views of the mapped shards, made once per expert (views
        hold no memory of their own; making six of them costs more than the kernel on a small expert)."""
        found = self._views.get((layer, expert))
        if found is None:
            stored = [self.ckpt.weight(expert_module(layer, expert, p)).parts for p in PROJS]
            gate, up, down = ((s["packed"], s["scale"]) for s in stored)
            found = self._views[(layer, expert)] = (gate, up, down)
        return found

    def stored(self, layer: int, expert: int) -> cpu_ggml.GgmlExpert | cpu_ggml.CheckedExpert:
        """(gate, up, down) as stored in the GGUF file: zero-copy views, made (and, for the native kernel when they
        are ggml types, checked) once per expert."""
        found = self._stored.get((layer, expert))
        if found is None:
            gate, up, down = (self.ckpt.weight(expert_module(layer, expert, p)) for p in PROJS)
            found = (gate, up, down)
            if all(w.fmt in GGML_BLOCKS for w in found):
                found = cpu_ggml.check_expert(found, gate.shape[1], f"layer {layer} expert {expert}")
            self._stored[(layer, expert)] = found
        return found

    def native_kind(self, layer: int) -> tuple[str, tuple[str, str, str], int] | None:
        """How a decode token's native layer (kernels/cpu_layer.py) takes this layer's experts: ("int4", ("", "",
        ""), I) or ("ggml", (gate, up, down types), I); None where the experts go through torch (or float32)."""
        if self.dtype == torch.float32:
            return None
        if self.native:
            inter = self.ckpt.config.moe_intermediate_size
            hidden = self.ckpt.config.hidden_size
            return ("int4", ("", "", ""), inter) if inter % 32 == 0 and hidden % 32 == 0 else None
        if self.native_ggml:
            first = self.stored(layer, 0)
            if isinstance(first, cpu_ggml.CheckedExpert):
                return "ggml", first.fmts, first.inter
        return None

    def pointers(self, layer: int, expert: int) -> tuple[int, ...]:
        """The expert's weight pointers as kernels/cpu_layer.py's DecodeLayer.finish takes them: (gate, up, down)
        data for ggml types, (packed, scale) of each for INT4; checked once (shape, and the layer's ggml types)."""
        found = self._pointers.get((layer, expert))
        if found is not None:
            return found
        if self.native:
            gate, up, down = self.packed(layer, expert)
            cfg = self.ckpt.config
            _, inter = check_int4_expert(torch.empty(1, cfg.hidden_size), gate, up, down)
            if inter != cfg.moe_intermediate_size:  # the native layer passes the config's I for every expert
                raise ValueError(
                    f"layer {layer} expert {expert}: inter size {inter}, the config says {cfg.moe_intermediate_size}"
                )
            found = tuple(t.data_ptr() for pair in (gate, up, down) for t in pair)
        else:
            c = self.stored(layer, expert)
            kind = self.native_kind(layer)
            if not isinstance(c, cpu_ggml.CheckedExpert) or kind is None or c.fmts != kind[1] or c.inter != kind[2]:
                raise ValueError(
                    f"layer {layer} expert {expert}: its weights are not of the layer's types and shape "
                    f"{kind}; one native call takes one layer's experts of one kind"
                )
            found = c.ptrs
        self._pointers[(layer, expert)] = found
        return found

    def compute(
        self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, experts: Collection[int]
    ) -> torch.Tensor:
        """sum over (t, k) with ids[t, k] in `experts` of weights[t, k] * expert(x[t]): [T, D] float32 on the CPU."""
        if self.native:
            packed = {e: self.packed(layer, e) for e in experts}
            xf, idc, wf = x.float().contiguous(), ids.contiguous(), weights.float().contiguous()
            if x.shape[0] == 1 and self.dtype != torch.float32:  # decode: int8 activations, integer dot products
                y = int4_grouped_ffn_q8_cpu(xf, idc, wf, packed)
                if y is not None:
                    return y
            return int4_grouped_ffn_cpu(xf, idc, wf, packed)
        stored = {e: self.stored(layer, e) for e in experts} if self.native_ggml else {}
        if stored and isinstance(next(iter(stored.values())), cpu_ggml.CheckedExpert):  # a float layer: below
            return cpu_ggml.ggml_grouped_ffn_cpu(
                x.float().contiguous(), ids.contiguous(), weights.float().contiguous(), stored
            )
        return grouped_ffn(x, ids, weights, lambda e: self.weights(layer, e), only=set(experts))
