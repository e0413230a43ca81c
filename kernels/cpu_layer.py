"""A decode token's layer on the CPU in two native calls (csrc/layer_cpu.h, in the ggml kernel's library), and the
SwiGLU MLP in one.

`DecodeLayer.attend`: h += attention(norm(h)), x2 = norm(h), and for a MoE layer its routing;
`DecodeLayer.finish`: h += routed experts(x2) + the shared expert or dense MLP(x2). Between the two the caller books
the routed experts (offload/experts: the store pins them) and passes their pointers. Same roundings as the torch
path of offload/model (the residual stream bf16, the MLPs float32): the model's tests hold the two to the same
bits. `NativeMlp` is the MLP alone (the shared expert and dense MLP on the other paths, and prefill), with
`mlp_int8_ref` its NumPy reference.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kernels.cpu_ggml import _lib, _raise_rc, activation_block, check_ggml_weight, ggml_grouped_ffn_int8_ref
from kernels.cpu_mla import MlaDecoder, _Args, _Weight, _weight
from kernels.dequant import StoredWeight
from kernels.ggml import dequantize_ggml_ref

EXPERT_KINDS = {"ggml": 0, "int4": 1}  # routed experts: 3 pointers an expert (ggml), or 6 (INT4 packed + scale)


class _MlpArgs(ctypes.Structure):
    _fields_ = [("gate", _Weight), ("up", _Weight), ("down", _Weight)]


class _LayerArgs(ctypes.Structure):
    _fields_ = [
        ("attn_norm", ctypes.c_void_p),
        ("mlp_norm", ctypes.c_void_p),
        ("mla", ctypes.POINTER(_Args)),
        ("router_w", ctypes.c_void_p),
        ("router_b", ctypes.c_void_p),
        ("n_experts", ctypes.c_int64),
        ("top_k", ctypes.c_int32),
        ("n_group", ctypes.c_int32),
        ("topk_group", ctypes.c_int32),
        ("norm_topk", ctypes.c_int32),
        ("scaling", ctypes.c_float),
        ("eps", ctypes.c_float),
        ("expert_kind", ctypes.c_int32),
        ("expert_types", ctypes.c_int32 * 3),
        ("expert_inter", ctypes.c_int64),
        ("mlp", _MlpArgs),
    ]


def _check_mlp(gate: StoredWeight, up: StoredWeight, down: StoredWeight) -> tuple[int, int]:
    """(D, I) after checking the three weights fit one another (ValueError naming the one that does not)."""
    i, d = check_ggml_weight(gate, "gate")
    for name, w, shape in (("up", up, (i, d)), ("down", down, (d, i))):
        if check_ggml_weight(w, name) != shape:
            raise ValueError(f"{name}: expected shape {shape} to match gate {gate.shape}, got {w.shape}")
    return d, i


class NativeMlp:
    """down(silu(gate x) * up x) with the three weights in ggml types, in one native call (x quantized once)."""

    def __init__(self, gate: StoredWeight, up: StoredWeight, down: StoredWeight, isa: str | None = None) -> None:
        self.weights = (gate, up, down)
        self.hidden, self.inter = _check_mlp(gate, up, down)
        self.lib = _lib(isa)
        self.args = _MlpArgs(*(_weight(self.lib, w) for w in self.weights))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, D] float32, contiguous, CPU -> [T, D] float32."""
        d = self.hidden
        if x.dtype != torch.float32 or x.ndim != 2 or x.shape[1] != d or not x.is_cpu or not x.is_contiguous():
            raise ValueError(f"x: expected a contiguous float32 CPU tensor [T, {d}], got {x.dtype} {list(x.shape)}")
        y = torch.empty(x.shape[0], d, dtype=torch.float32)
        rc = self.lib.lib.kimi_ggml_mlp(
            ctypes.byref(self.args), x.data_ptr(), x.shape[0], d, y.data_ptr(), torch.get_num_threads()
        )
        _raise_rc(rc, "kimi_ggml_mlp")
        return y


def mlp_int8_ref(x: np.ndarray, gate: StoredWeight, up: StoredWeight, down: StoredWeight) -> np.ndarray:
    """What NativeMlp computes, in float64: x [T, D] -> [T, D], activations int8 per each weight's block."""
    dense = tuple(dequantize_ggml_ref(w.parts["data"].numpy(), w.fmt, w.shape[1]) for w in (gate, up, down))
    blocks = (activation_block(gate.fmt), activation_block(up.fmt), activation_block(down.fmt))
    n = x.shape[0]
    return ggml_grouped_ffn_int8_ref(x, np.zeros((n, 1), np.int64), np.ones((n, 1)), {0: dense}, blocks)


@dataclass(frozen=True, slots=True)
class LayerRouting:
    """A MoE layer's router as the native call takes it (offload/model/router.py's fields) and its experts' kind."""

    weight: torch.Tensor  # [E, D] float32, contiguous
    bias: torch.Tensor  # [E] float32
    top_k: int
    n_group: int
    topk_group: int
    norm_topk_prob: bool
    scaling: float
    expert_kind: str  # "ggml" or "int4"
    expert_types: tuple[str, str, str]  # ggml: gate, up, down ("" for INT4)
    expert_inter: int  # I


class DecodeLayer:
    """One layer of a decode token in two native calls, its arguments prepared once."""

    def __init__(
        self,
        attn_norm: torch.Tensor,
        mlp_norm: torch.Tensor,
        eps: float,
        attention: MlaDecoder,
        routing: LayerRouting | None,
        mlp: NativeMlp | None,
    ) -> None:
        """attn_norm, mlp_norm: [D] bf16; routing None: a dense layer (then `mlp` is its MLP); mlp None: a MoE
        layer without a shared expert."""
        d = attention.hidden
        for name, t in (("attn_norm", attn_norm), ("mlp_norm", mlp_norm)):
            if t.dtype != torch.bfloat16 or tuple(t.shape) != (d,) or not t.is_contiguous() or not t.is_cpu:
                raise ValueError(f"{name}: expected a contiguous bf16 CPU vector [{d}], got {t.dtype} {list(t.shape)}")
        if routing is None and mlp is None:
            raise ValueError("a dense layer needs its MLP")
        if mlp is not None and mlp.hidden != d:
            raise ValueError(f"the MLP's hidden size {mlp.hidden} is not the attention's {d}")
        self.hidden = d
        self.attention = attention
        self.lib = attention.lib
        self.norms = (attn_norm, mlp_norm)  # kept alive: the arguments point at them
        self.routing = routing
        self.mlp = mlp
        self.top_k = 0 if routing is None else routing.top_k
        lib = self.lib
        args = _LayerArgs(attn_norm.data_ptr(), mlp_norm.data_ptr(), ctypes.pointer(attention.args))
        args.eps = eps
        if routing is not None:
            e, dr = routing.weight.shape
            if dr != d or routing.weight.dtype != torch.float32 or not routing.weight.is_contiguous():
                raise ValueError(
                    f"router weight: expected a contiguous float32 [E, {d}], got {list(routing.weight.shape)}"
                )
            if routing.bias.dtype != torch.float32 or tuple(routing.bias.shape) != (e,):
                raise ValueError(f"router bias: expected float32 [{e}], got {list(routing.bias.shape)}")
            if routing.expert_kind not in EXPERT_KINDS:
                raise ValueError(f"expert kind {routing.expert_kind!r}; choose one of {', '.join(EXPERT_KINDS)}")
            args.router_w, args.router_b, args.n_experts = routing.weight.data_ptr(), routing.bias.data_ptr(), e
            args.top_k, args.n_group, args.topk_group = routing.top_k, routing.n_group, routing.topk_group
            args.norm_topk, args.scaling = int(routing.norm_topk_prob), routing.scaling
            args.expert_kind = EXPERT_KINDS[routing.expert_kind]
            if routing.expert_kind == "ggml":
                args.expert_types = (ctypes.c_int32 * 3)(*(lib.type_id(f) for f in routing.expert_types))
            args.expert_inter = routing.expert_inter
        if mlp is not None:
            args.mlp = mlp.args
        self.args = args
        self.x2 = torch.empty(1, d, dtype=torch.float32)  # [1, D] the normed stream between the two calls
        self._ids = (ctypes.c_int64 * max(1, self.top_k))()
        self._wts = (ctypes.c_float * max(1, self.top_k))()

    def attend(
        self, h: torch.Tensor, latent: torch.Tensor, k_pe: torch.Tensor, pos: int, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[list[int], list[float]]:
        """h [1, D] bf16 (updated in place) at position `pos`: its attention (writing cache row `pos` of this layer's
        latent [max_tokens, rank] and k_pe [max_tokens, rope], bf16) and, for a MoE layer, (ids best first,
        weights) of its routing; ([], []) for a dense layer. cos, sin: [rope / 2] float32, contiguous."""
        self._check_h(h)
        self.attention.set_position(latent, k_pe, pos, cos, sin)
        rc = self.lib.lib.kimi_decode_attn(
            ctypes.byref(self.args), h.data_ptr(), self.hidden, self.x2.data_ptr(),
            ctypes.addressof(self._ids), ctypes.addressof(self._wts), torch.get_num_threads(),
        )  # fmt: skip
        _raise_rc(rc, "kimi_decode_attn")
        return list(self._ids[: self.top_k]), list(self._wts[: self.top_k])

    def finish(self, h: torch.Tensor, ptrs: Sequence[int], wts: Sequence[float]) -> None:
        """h [1, D] bf16 += the layer's MLP part of x2 (from `attend`): the routed experts whose weight pointers
        (sorted by expert id; 3 an expert for ggml, 6 for INT4) and weights are given, plus the shared expert or
        the dense MLP."""
        self._check_h(h)
        per = 3 if self.routing is None or self.routing.expert_kind == "ggml" else 6
        n = len(wts)
        if len(ptrs) != per * n or (n and self.routing is None):
            raise ValueError(f"{n} routed experts need {per * n} pointers (got {len(ptrs)}) and a MoE layer")
        p = (ctypes.c_int64 * max(1, len(ptrs)))(*ptrs)
        w = (ctypes.c_float * max(1, n))(*wts)
        rc = self.lib.lib.kimi_decode_ffn(
            ctypes.byref(self.args), h.data_ptr(), self.x2.data_ptr(), self.hidden, n, ctypes.addressof(p),
            ctypes.addressof(w), torch.get_num_threads(),
        )  # fmt: skip
        _raise_rc(rc, "kimi_decode_ffn")

    def _check_h(self, h: torch.Tensor) -> None:
        if h.dtype != torch.bfloat16 or h.numel() != self.hidden or not h.is_contiguous() or not h.is_cpu:
            raise ValueError(
                f"h: expected a contiguous bf16 CPU tensor [1, {self.hidden}], got {h.dtype} {list(h.shape)}"
            )
