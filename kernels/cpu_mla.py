"""One decode token's Multi-head Latent Attention on the CPU in one native call (csrc/mla_cpu.h, in the ggml
kernel's library): the Linears in their ggml types with int8 activations, both latent norms, rope, the write of the
token's latent and k_pe into the cache, the absorbed per-head matrices (Q8_0) and the attention over every cached
position, float32 between the steps. The torch path it replaces runs ~60 ops per layer and rounds to bf16 after
each; `mla_decode_ref` is the NumPy reference (float64, the same int8 rounding of the activations).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from kernels.cpu_ggml import _lib, _raise_rc, activation_block, check_ggml_weight, quantize_activations_ref
from kernels.dequant import StoredWeight
from kernels.ggml import dequantize_ggml_ref


class _Weight(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("type", ctypes.c_int32),
        ("pad", ctypes.c_int32),
        ("out", ctypes.c_int64),
        ("in_", ctypes.c_int64),
    ]


class _Args(ctypes.Structure):
    _fields_ = [
        ("q_a", _Weight),
        ("q_b", _Weight),
        ("kv_a", _Weight),
        ("uk", _Weight),
        ("uv", _Weight),
        ("o", _Weight),
        ("q_a_norm", ctypes.c_void_p),
        ("kv_a_norm", ctypes.c_void_p),
        ("heads", ctypes.c_int64),
        ("nope", ctypes.c_int64),
        ("rope", ctypes.c_int64),
        ("v", ctypes.c_int64),
        ("rank", ctypes.c_int64),
        ("cos", ctypes.c_void_p),
        ("sin", ctypes.c_void_p),
        ("interleaved", ctypes.c_int32),
        ("cache_bf16", ctypes.c_int32),
        ("eps", ctypes.c_float),
        ("scale", ctypes.c_float),
        ("latent", ctypes.c_void_p),
        ("k_pe", ctypes.c_void_p),
        ("pos", ctypes.c_int64),
    ]


@dataclass(frozen=True, slots=True)
class MlaDecodeWeights:
    """One layer's attention for the native decode call: the Linears as stored (ggml types), the absorbed
    matrices as Q8_0 rows (uk [H * rank, nope]: w_uk transposed per head; uv [H * v, rank]), norms float32."""

    q_a: StoredWeight | None  # [q_rank, D]; None: q_b is a plain q_proj [H * (nope + rope), D]
    q_a_norm: torch.Tensor | None  # [q_rank] float32
    q_b: StoredWeight  # [H * (nope + rope), q_rank or D]
    kv_a: StoredWeight  # [rank + rope, D]
    kv_a_norm: torch.Tensor  # [rank] float32
    uk: StoredWeight  # [H * rank, nope]
    uv: StoredWeight  # [H * v, rank]
    o: StoredWeight  # [D, H * v]
    heads: int
    nope: int
    rope: int
    v: int
    rank: int
    interleaved: bool  # rope on pairs (Kimi) or halves
    eps: float  # the latent norms' eps
    scale: float  # softmax scale

    def check(self) -> int:
        """D, after checking every shape (ValueError naming the weight that does not fit)."""
        H, qk = self.heads, self.nope + self.rope
        if self.nope % 32 or self.rank % 32 or self.rope % 2 or (H * self.v) % 32:
            raise ValueError(
                f"native MLA decode needs nope and kv_lora_rank multiples of 32 and an even rope dim; got nope "
                f"{self.nope}, rank {self.rank}, rope {self.rope}"
            )
        d = check_ggml_weight(self.kv_a, "kv_a")[1]
        want: list[tuple[str, StoredWeight, tuple[int, int]]] = [
            ("kv_a", self.kv_a, (self.rank + self.rope, d)),
            ("uk", self.uk, (H * self.rank, self.nope)),
            ("uv", self.uv, (H * self.v, self.rank)),
            ("o", self.o, (d, H * self.v)),
        ]
        if self.q_a is not None:
            qr = check_ggml_weight(self.q_a, "q_a")[0]
            want += [("q_a", self.q_a, (qr, d)), ("q_b", self.q_b, (H * qk, qr))]
            if qr % 32 or self.q_a_norm is None or tuple(self.q_a_norm.shape) != (qr,):
                raise ValueError(f"q_a: {qr} rows (need a multiple of 32) and a float32 norm [{qr}]")
        else:
            want.append(("q_b", self.q_b, (H * qk, d)))
        for name, w, shape in want:
            if check_ggml_weight(w, name) != shape:
                raise ValueError(f"{name}: expected shape {shape}, got {w.shape}")
        for name, t, n in (("kv_a_norm", self.kv_a_norm, self.rank), ("q_a_norm", self.q_a_norm, None)):
            if t is not None and (t.dtype != torch.float32 or not t.is_contiguous() or (n and t.numel() != n)):
                raise ValueError(f"{name}: expected a contiguous float32 vector, got {t.dtype} {list(t.shape)}")
        return d


def _weight(lib: object, w: StoredWeight | None) -> _Weight:
    if w is None:
        return _Weight(None, 0, 0, 0, 0)
    return _Weight(w.parts["data"].data_ptr(), lib.type_id(w.fmt), 0, w.shape[0], w.shape[1])  # type: ignore[attr-defined]


class MlaDecoder:
    """One layer's native decode call, its weights' part of the arguments prepared once (a decode step calls it
    once per layer; building the argument block costs as much as a small kernel)."""

    def __init__(self, w: MlaDecodeWeights, isa: str | None = None) -> None:
        self.w = w
        self.hidden = w.check()
        self.lib = _lib(isa)
        lib = self.lib
        self.args = _Args(
            _weight(lib, w.q_a), _weight(lib, w.q_b), _weight(lib, w.kv_a), _weight(lib, w.uk), _weight(lib, w.uv),
            _weight(lib, w.o),
            None if w.q_a_norm is None else w.q_a_norm.data_ptr(), w.kv_a_norm.data_ptr(),
            w.heads, w.nope, w.rope, w.v, w.rank, None, None, int(w.interleaved), 0, w.eps, w.scale, None, None, 0,
        )  # fmt: skip

    def __call__(
        self, x: torch.Tensor, latent: torch.Tensor, k_pe: torch.Tensor, pos: int, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """x [1, D] float32 (normed) at position `pos` -> attention output [1, D] float32; writes row `pos` of this
        layer's cache (latent [max_tokens, rank], k_pe [max_tokens, rope]: bf16 or float32, contiguous) and attends
        to rows 0 .. pos. cos, sin: [rope / 2] float32 for `pos`."""
        hidden = self.hidden
        if x.dtype != torch.float32 or not x.is_contiguous() or x.numel() != hidden or not x.is_cpu:
            raise ValueError(
                f"x: expected a contiguous float32 CPU tensor of {hidden} values, got {x.dtype} {list(x.shape)}"
            )
        cos, sin = cos.contiguous(), sin.contiguous()  # alive through the call
        self.set_position(latent, k_pe, pos, cos, sin)
        y = torch.empty(1, hidden, dtype=torch.float32)
        rc = self.lib.lib.kimi_mla_decode(
            ctypes.byref(self.args), x.data_ptr(), hidden, y.data_ptr(), torch.get_num_threads()
        )
        _raise_rc(rc, "mla_decode_cpu")
        return y

    def set_position(
        self, latent: torch.Tensor, k_pe: torch.Tensor, pos: int, cos: torch.Tensor, sin: torch.Tensor
    ) -> None:
        """The call's per-token part of the arguments, checked: the cache (as in __call__), `pos`, cos and sin (the
        tensors must outlive the call that reads them)."""
        w = self.w
        if latent.dtype != k_pe.dtype or latent.dtype not in (torch.bfloat16, torch.float32):
            raise ValueError(f"the cache must be bf16 or float32 (latent {latent.dtype}, k_pe {k_pe.dtype})")
        if (
            latent.shape[-1] != w.rank
            or k_pe.shape[-1] != w.rope
            or not (latent.is_contiguous() and k_pe.is_contiguous())
        ):
            raise ValueError(f"cache rows: expected contiguous [*, {w.rank}] and [*, {w.rope}]")
        if not 0 <= pos < min(latent.shape[0], k_pe.shape[0]):
            raise ValueError(f"position {pos} is outside a cache of {latent.shape[0]} rows")
        half = w.rope // 2
        if cos.dtype != torch.float32 or sin.dtype != torch.float32 or cos.numel() != half or sin.numel() != half:
            raise ValueError(f"cos and sin: expected float32 [{half}] each")
        if not (cos.is_contiguous() and sin.is_contiguous()):
            raise ValueError("cos and sin: expected contiguous vectors")
        a = self.args
        a.cos, a.sin, a.latent, a.k_pe = cos.data_ptr(), sin.data_ptr(), latent.data_ptr(), k_pe.data_ptr()
        a.cache_bf16, a.pos = int(latent.dtype == torch.bfloat16), pos


def mla_decode_cpu(
    x: torch.Tensor,
    w: MlaDecodeWeights,
    latent: torch.Tensor,
    k_pe: torch.Tensor,
    pos: int,
    cos: torch.Tensor,
    sin: torch.Tensor,
    isa: str | None = None,
) -> torch.Tensor:
    """`MlaDecoder(w, isa)(x, latent, k_pe, pos, cos, sin)`: one call, the arguments prepared for it alone."""
    return MlaDecoder(w, isa)(x, latent, k_pe, pos, cos, sin)


# ---- NumPy reference ------------------------------------------------------------------------------------------------
def _q(x: np.ndarray, reader: StoredWeight) -> np.ndarray:
    """int8 as the kernel rounds activations for the weight that reads them (per 32 or 256), as float64 values;
    x [..., n]."""
    flat = x.reshape(-1, x.shape[-1]).astype(np.float32)
    return quantize_activations_ref(flat, activation_block(reader.fmt)).reshape(x.shape)


def _dense(w: StoredWeight) -> np.ndarray:
    return dequantize_ggml_ref(w.parts["data"].numpy(), w.fmt, w.shape[1]).astype(np.float64)


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x) + eps) * w


def _rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, interleaved: bool) -> np.ndarray:
    """x [..., d] rotated."""
    half = x.shape[-1] // 2
    a, b = (x[..., 0::2], x[..., 1::2]) if interleaved else (x[..., :half], x[..., half:])
    ra, rb = a * cos - b * sin, b * cos + a * sin
    out = np.empty_like(x)
    if interleaved:
        out[..., 0::2], out[..., 1::2] = ra, rb
    else:
        out[..., :half], out[..., half:] = ra, rb
    return out


def mla_decode_ref(
    x: np.ndarray,
    w: MlaDecodeWeights,
    latent: np.ndarray,
    k_pe: np.ndarray,
    pos: int,
    cos: np.ndarray,
    sin: np.ndarray,
    cache_round: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the kernel computes, in float64: x [D] -> (out [D], the token's latent [rank], its k_pe [rope]).
    latent [>= pos, rank] and k_pe hold rows 0 .. pos - 1 (float64); `cache_round` (values -> values) is the
    cache's rounding of the new row (bf16), applied before it is attended to."""
    H, nope, r, v = w.heads, w.nope, w.rope, w.v
    c64, s64 = cos.astype(np.float64), sin.astype(np.float64)
    if w.q_a is not None:
        assert w.q_a_norm is not None
        qa = _rms(_dense(w.q_a) @ _q(x, w.q_a), w.q_a_norm.numpy().astype(np.float64), w.eps)
        q = _dense(w.q_b) @ _q(qa, w.q_b)
    else:
        q = _dense(w.q_b) @ _q(x, w.q_b)
    q = q.reshape(H, nope + r)
    kv = _dense(w.kv_a) @ _q(x, w.kv_a)
    lat = _rms(kv[: w.rank], w.kv_a_norm.numpy().astype(np.float64), w.eps)
    pe = _rope(kv[w.rank :], c64, s64, w.interleaved)
    rnd = cache_round or (lambda a: a)
    all_lat = np.concatenate([latent[:pos], rnd(lat)[None]])  # [S, rank]
    all_pe = np.concatenate([k_pe[:pos], rnd(pe)[None]])  # [S, rope]
    q_pe = _rope(q[:, nope:], c64, s64, w.interleaved)  # [H, rope]
    uk = _dense(w.uk).reshape(H, w.rank, nope)
    q_lat = np.einsum("hcd,hd->hc", uk, _q(q[:, :nope], w.uk))  # [H, rank]
    scores = w.scale * (q_lat @ all_lat.T + q_pe @ all_pe.T)  # [H, S]
    p = np.exp(scores - scores.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    o_lat = p @ all_lat  # [H, rank]
    uv = _dense(w.uv).reshape(H, v, w.rank)
    att = np.einsum("hvc,hc->hv", uv, _q(o_lat, w.uv)).reshape(-1)  # [H * v]
    return _dense(w.o) @ _q(att, w.o), lat, pe
