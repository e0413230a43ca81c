"""Routed experts that sit in GPU slots, computed where the slots are.

On CUDA: one grouped Triton kernel per matrix kind over all of a layer's experts (kernels/triton_int4.py); groups
whose expert has no slot do no work; the map is restricted to the experts the caller chose for the GPU. Elsewhere
(the GPU logic run on the CPU in tests): each slotted expert dequantized from its slot and multiplied.
"""

from __future__ import annotations

import torch

from kernels.ffn import expert_ffn
from kernels.int4 import dequantize_int4
from offload.experts.slots import GpuSlots


def run_slotted(
    slots: GpuSlots, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, slotted: list[int]
) -> torch.Tensor:
    """sum over (t, k) whose expert is in a slot of weights[t, k] * expert(x[t]): [T, D] float32 on the slots'
    device. x, ids, weights on that device; `slotted`: the slotted experts among ids to run here (no others are)."""
    slot_of = slots.slot_map(layer)  # [E] int32
    out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)  # [T, D]
    if slots.device.type == "cuda":
        from kernels.triton_int4 import int4_grouped_ffn  # imported here: Triton only matters with CUDA

        n_experts = slot_of.shape[0]
        # Only `slotted` may run here: the prefetcher can fill a free slot with another of this layer's experts
        # after the split sent that one to the CPU, and the map then shows it (it would be counted twice).
        keep = torch.zeros(n_experts, dtype=torch.bool)
        keep[torch.tensor(slotted, dtype=torch.long)] = True
        slot_of = torch.where(keep.pin_memory().to(x.device, non_blocking=True), slot_of, -1)  # [E] int32
        flat = ids.reshape(-1)  # [T*k]
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=n_experts)  # [E]
        offsets = torch.zeros(n_experts + 1, dtype=torch.int32, device=x.device)
        offsets[1:] = torch.cumsum(counts, 0)
        group_expert = torch.arange(n_experts, dtype=torch.int32, device=x.device)
        tokens = order.div(ids.shape[1], rounding_mode="floor")  # [T*k] token of each sorted pair
        xs = x.index_select(0, tokens)  # [T*k, D] rows sorted by expert
        p = slots.pools
        y = int4_grouped_ffn(xs, p["gate"], p["up"], p["down"], slot_of, offsets, group_expert)  # [T*k, D] f32
        return out.index_add_(0, tokens, y * weights.reshape(-1)[order, None])
    slot_list = slot_of.tolist()
    xf = x.float()
    for e in slotted:
        s = slot_list[e]
        tok, k = torch.nonzero(ids == e, as_tuple=True)
        gate, up, down = (dequantize_int4(pp[s], ps[s], pp.shape[2] * 8) for pp, ps in slots.pools.values())
        y = expert_ffn(xf[tok], gate, up, down)  # [n, D] float32
        out.index_add_(0, tok, y * weights[tok, k, None])
    return out
