"""Stored sizes of a config's safetensors layout, as the tests check them (an HfConfig: architecture, layout, quantization)."""

from __future__ import annotations

from dataclasses import dataclass

from offload.checkpoint.layout import layout_storage
from offload.hf_config import HfConfig


@dataclass(frozen=True, slots=True)
class Sizes:
    expert_bytes: int
    routed_expert_bytes: int
    routed_bytes_per_token: int
    nonexpert_bytes_by_part: dict[str, int]
    nonexpert_bytes: int
    total_bytes: int


def sizes(hf: HfConfig) -> Sizes:
    st, cfg = layout_storage(hf), hf.model
    n_moe = len(cfg.moe_layers)
    routed = st.expert_bytes * cfg.n_routed_experts * n_moe
    return Sizes(
        st.expert_bytes,
        routed,
        st.expert_bytes * cfg.num_experts_per_tok * n_moe,
        dict(st.part_bytes),
        st.nonexpert_bytes,
        st.nonexpert_bytes + routed,
    )
