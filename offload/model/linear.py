"""A Linear's weight as the model holds it: a dense tensor [out, in] in the compute dtype, or, on the CPU, the
stored ggml blocks of a GGUF file, multiplied in place by the native kernel with int8 activations (no dense copy:
a Q8_0 weight stays half the bytes of its bf16 form, and it is read straight from the page cache)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.cpu_ggml import check_ggml_weight, ggml_linear_cpu
from kernels.dequant import StoredWeight


class QuantLinear:
    """y = x @ W.T with W [out, in] kept as stored (a ggml type); x any float dtype on the CPU, y in x's dtype."""

    __slots__ = ("in_features", "out_features", "weight")

    def __init__(self, weight: StoredWeight) -> None:
        self.weight = weight
        self.out_features, self.in_features = check_ggml_weight(weight, "QuantLinear weight")

    @property
    def shape(self) -> tuple[int, int]:
        return self.weight.shape

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, in] float32, contiguous -> [N, out] float32 (no dtype round trip)."""
        return ggml_linear_cpu(x, self.weight, checked=True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # [N, in]
        y = ggml_linear_cpu(flat.float().contiguous(), self.weight, checked=True)  # [N, out] float32
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)


Weight = torch.Tensor | QuantLinear


def linear(x: torch.Tensor, w: Weight) -> torch.Tensor:
    """x [..., in] @ w.T -> [..., out]."""
    return F.linear(x, w) if isinstance(w, torch.Tensor) else w(x)
