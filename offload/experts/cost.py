"""Where one expert should run this step: on the CPU where its bytes sit, or copied to a GPU slot and run there."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Where = Literal["cpu", "gpu"]


@dataclass(frozen=True, slots=True)
class CostModel:
    """Seconds per expert from the hardware profile's rates (GB/s and FLOP/s are 1e9 and 1e12 based, as printed
    by `kimi-offload plan`). An expert is `expert_bytes` of weights and 2 * `expert_params` FLOPs per token."""

    expert_bytes: int
    expert_params: int
    dram_gbs: float
    nvme_gbs: float
    cpu_gflops: float
    pcie_gbs: float = 0.0  # 0: no GPU
    gpu_tflops: float = 0.0

    def __post_init__(self) -> None:
        if min(self.dram_gbs, self.nvme_gbs, self.cpu_gflops) <= 0:
            raise ValueError(f"dram_gbs, nvme_gbs and cpu_gflops must be > 0: {self}")

    @property
    def has_gpu(self) -> bool:
        return self.pcie_gbs > 0 and self.gpu_tflops > 0

    def disk_s(self, in_ram: bool) -> float:
        return 0.0 if in_ram else self.expert_bytes / (self.nvme_gbs * 1e9)

    def cpu_s(self, tokens: int, in_ram: bool) -> float:
        """Read the weights from RAM (after disk if needed) and compute `tokens` rows on the CPU; the two overlap
        badly on the CPU, so they add."""
        read = self.expert_bytes / (self.dram_gbs * 1e9)
        compute = 2 * self.expert_params * tokens / (self.cpu_gflops * 1e9)
        return self.disk_s(in_ram) + read + compute

    def gpu_s(self, tokens: int, in_slot: bool, in_ram: bool) -> float:
        """Copy the expert over PCIe unless it is in a slot already, then compute `tokens` rows on the GPU."""
        if not self.has_gpu:
            return float("inf")
        copy = 0.0 if in_slot else self.disk_s(in_ram) + self.expert_bytes / (self.pcie_gbs * 1e9)
        return copy + 2 * self.expert_params * tokens / (self.gpu_tflops * 1e12)

    def choose(self, tokens: int, in_slot: bool, in_ram: bool) -> Where:
        """The cheaper place for this step; an expert already in a slot always runs there."""
        if in_slot:
            return "gpu"
        return "gpu" if self.gpu_s(tokens, False, in_ram) < self.cpu_s(tokens, in_ram) else "cpu"

    def break_even_tokens(self) -> int | None:
        """Fewest tokens routed to a RAM-resident expert for which copying it to the GPU wins (None: never)."""
        if not self.has_gpu:
            return None
        per_cpu = 2 * self.expert_params / (self.cpu_gflops * 1e9)  # seconds per token
        per_gpu = 2 * self.expert_params / (self.gpu_tflops * 1e12)
        if per_cpu <= per_gpu:
            return None
        gap = self.expert_bytes / (self.pcie_gbs * 1e9) - self.expert_bytes / (self.dram_gbs * 1e9)
        tokens = max(1, int(gap / (per_cpu - per_gpu)))
        while tokens > 1 and self.choose(tokens - 1, False, True) == "gpu":  # float rounding at the edge
            tokens -= 1
        while self.choose(tokens, False, True) != "gpu":
            tokens += 1
        return tokens
