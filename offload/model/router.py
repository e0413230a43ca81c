"""The DeepSeek-V3 router: sigmoid scores, a bias that steers the choice only, group-limited top-k; float32."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.cpu_router import route_cpu
from offload.config import ModelConfig

NATIVE_DTYPES = (torch.float32, torch.bfloat16)  # the inputs kernels.cpu_router takes


@dataclass(frozen=True, slots=True)
class Router:
    """Routing of one MoE layer."""

    weight: torch.Tensor  # [E, D] float32
    bias: torch.Tensor  # [E] float32, e_score_correction_bias
    top_k: int
    n_group: int
    topk_group: int
    norm_topk_prob: bool
    scaling: float

    @classmethod
    def build(cls, cfg: ModelConfig, weight: torch.Tensor, bias: torch.Tensor) -> Router:
        return cls(
            weight.float().contiguous(),
            bias.float().contiguous(),
            cfg.num_experts_per_tok,
            cfg.n_group,
            cfg.topk_group,
            cfg.norm_topk_prob,
            cfg.routed_scaling_factor,
        )

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, D] -> (expert ids [T, k] int64, weights [T, k] float32). A decode token on the CPU takes one native
        call (kernels.cpu_router) where the library builds, else the torch ops below."""
        if x.shape[0] == 1 and x.is_cpu and self.weight.is_cpu and x.dtype in NATIVE_DTYPES and self.native_fits:
            native = route_cpu(
                x, self.weight, self.bias, self.top_k, self.n_group, self.topk_group, self.norm_topk_prob, self.scaling
            )
            if native is not None:
                return native
        ids, scores = self.select(x)
        w = scores.gather(1, ids)  # the unbiased scores weight the outputs
        if self.norm_topk_prob:
            w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
        return ids, w * self.scaling

    @property
    def native_fits(self) -> bool:
        """Whether kernels.cpu_router takes this routing (top_k <= 64; 2..64 groups of >= 2 experts, or none)."""
        groups_fit = self.n_group == 1 or (self.n_group <= 64 and self.weight.shape[0] // self.n_group >= 2)
        return self.top_k <= 64 and groups_fit

    def select(
        self, x: torch.Tensor, top_k: int | None = None, prior: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, D] -> (the top_k (default k) experts per token [T, top_k], sigmoid scores [T, E]); `prior` [E] is
        added to the choice like the bias (the predictor's frequency blend)."""
        scores = torch.sigmoid(x.float() @ self.weight.T)  # [T, E]
        choice = scores + self.bias if prior is None else scores + self.bias + prior
        if self.n_group > 1:
            T, E = choice.shape
            grouped = choice.view(T, self.n_group, E // self.n_group)  # [T, G, E/G]
            group_score = grouped.topk(2, dim=-1).values.sum(dim=-1)  # [T, G]: sum of each group's best two
            keep = torch.zeros_like(group_score, dtype=torch.bool)
            keep.scatter_(1, group_score.topk(self.topk_group, dim=-1).indices, True)
            choice = choice.masked_fill(~keep.repeat_interleave(E // self.n_group, dim=1), float("-inf"))
        return choice.topk(top_k or self.top_k, dim=-1).indices, scores
