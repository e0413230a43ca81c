"""A MoE layer's routing on the CPU in one native call (csrc/router_cpu.h, in the ggml kernel's library): the
router's float32 matmul, sigmoid, bias, group-limited top-k and the weights, for a decode token without the ~15
torch ops of the torch path (offload/model/router.py, the reference the tests hold it to). `route_ref` is the NumPy
reference."""

from __future__ import annotations

import numpy as np
import torch

from kernels.cpu_ggml import _native, _raise_rc


def route_cpu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    top_k: int,
    n_group: int = 1,
    topk_group: int = 1,
    norm: bool = True,
    scaling: float = 1.0,
    isa: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """x [T, D] (float32 or bf16, CPU) -> (ids [T, top_k] int64, best first, weights [T, top_k] float32), or None
    where the native library is not available (the caller takes the torch path). weight [E, D] and bias [E]
    float32, contiguous."""
    lib = _native(isa)
    if lib is None:
        return None
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.dtype not in (torch.float32, torch.bfloat16) or not x.is_cpu:
        raise ValueError(
            f"x: expected a float32 or bf16 CPU tensor [T, D], got {getattr(x, 'shape', type(x).__name__)}"
        )
    t, d = x.shape
    e = weight.shape[0] if weight.ndim == 2 else -1
    if weight.dtype != torch.float32 or weight.ndim != 2 or weight.shape[1] != d or not weight.is_contiguous():
        raise ValueError(f"weight: expected a contiguous float32 [E, {d}], got {weight.dtype} {list(weight.shape)}")
    if bias.dtype != torch.float32 or tuple(bias.shape) != (e,) or not bias.is_contiguous():
        raise ValueError(f"bias: expected a contiguous float32 [{e}], got {bias.dtype} {list(bias.shape)}")
    if not 1 <= top_k <= min(e, 64) or n_group < 1 or e % n_group or not 1 <= topk_group <= n_group:
        raise ValueError(
            f"top_k {top_k}, n_group {n_group}, topk_group {topk_group} do not fit {e} experts (the native router "
            "takes top_k <= 64, n_group dividing the experts, topk_group <= n_group)"
        )
    if n_group > 1 and (e // n_group < 2 or n_group > 64):
        raise ValueError(f"{n_group} groups of {e // n_group} experts: the native router needs 2..64 groups of >= 2")
    xc = x.contiguous()
    scores = torch.empty(t, e, dtype=torch.float32)
    ids = torch.empty(t, top_k, dtype=torch.int64)
    w = torch.empty(t, top_k, dtype=torch.float32)
    rc = lib.lib.kimi_route(
        xc.data_ptr(), int(xc.dtype == torch.bfloat16), t, d, weight.data_ptr(), bias.data_ptr(), e, top_k, n_group,
        topk_group, int(norm), scaling, scores.data_ptr(), ids.data_ptr(), w.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    _raise_rc(rc, "route_cpu")
    return ids, w


def route_ref(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    top_k: int,
    n_group: int = 1,
    topk_group: int = 1,
    norm: bool = True,
    scaling: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The routing in float64: x [T, D] -> (ids [T, top_k] best first, weights [T, top_k])."""
    scores = 1.0 / (1.0 + np.exp(-(x.astype(np.float64) @ weight.astype(np.float64).T)))  # [T, E]
    choice = scores + bias.astype(np.float64)
    t, e = choice.shape
    if n_group > 1:
        grouped = choice.reshape(t, n_group, e // n_group)
        group_score = np.sort(grouped, axis=-1)[..., -2:].sum(axis=-1)  # [T, G]
        keep = np.argsort(-group_score, axis=-1, kind="stable")[:, :topk_group]
        mask = np.zeros((t, n_group), dtype=bool)
        np.put_along_axis(mask, keep, True, axis=-1)
        choice = np.where(np.repeat(mask, e // n_group, axis=1), choice, -np.inf)
    ids = np.argsort(-choice, axis=-1, kind="stable")[:, :top_k]
    w = np.take_along_axis(scores, ids, axis=-1)
    if norm:
        w = w / (w.sum(axis=-1, keepdims=True) + 1e-20)
    return ids, w * scaling
