"""Which weights a checkpoint quantizes, and how: compressed-tensors INT4, FP8 block, or none."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from offload.errors import OffloadError

WeightFormat = Literal["bf16", "int4", "fp8"]

# safetensors dtype strings and their sizes in bytes
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}

# torch dtype names as config.json spells them -> safetensors dtype strings
FLOAT_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


class ConfigError(OffloadError):
    """config.json holds a value this runtime does not support, or values that contradict each other."""


@dataclass(frozen=True, slots=True)
class QuantConfig:
    """How the checkpoint stores Linear weights."""

    format: WeightFormat = "bf16"
    group_size: int = 32  # int4: values per scale along the input dimension
    block: tuple[int, int] = (128, 128)  # fp8: [rows, cols] per weight_scale_inv entry
    ignore: tuple[str, ...] = ()  # module names or "re:" patterns left unquantized

    def quantizes(self, module: str, prefix: str = "") -> bool:
        """Whether the Linear `module` (name without the tensor prefix) is stored quantized."""
        if self.format == "bf16":
            return False
        names = (module, prefix + module) if prefix else (module,)
        for target in self.ignore:
            if target.startswith("re:"):
                if any(re.match(target[3:], n) for n in names):
                    return False
            elif target in names or (self.format == "fp8" and any(target in n for n in names)):
                return False  # fp8: transformers matches modules_to_not_convert as substrings
        return True

    def linear_tensors(
        self, out_f: int, in_f: int, dtype: str, quantized: bool
    ) -> dict[str, tuple[tuple[int, ...], str]]:
        """Tensor suffix -> (shape, safetensors dtype) for one Linear [out_f, in_f] as stored."""
        if not quantized:
            return {"weight": ((out_f, in_f), dtype)}
        if self.format == "int4":
            return {
                "weight_packed": ((out_f, in_f // 8), "I32"),
                "weight_scale": ((out_f, in_f // self.group_size), "BF16"),
                "weight_shape": ((2,), "I32"),
            }
        b0, b1 = self.block
        return {
            "weight": ((out_f, in_f), "F8_E4M3"),
            "weight_scale_inv": ((math.ceil(out_f / b0), math.ceil(in_f / b1)), "F32"),
        }

    def linear_bytes(self, out_f: int, in_f: int, dtype: str, quantized: bool) -> int:
        return sum(
            math.prod(s) * DTYPE_BYTES[d] for s, d in self.linear_tensors(out_f, in_f, dtype, quantized).values()
        )

    def to_dict(self) -> dict[str, Any] | None:
        """The `quantization_config` entry of config.json (None for unquantized checkpoints)."""
        if self.format == "int4":
            return {
                "config_groups": {
                    "group_0": {
                        "input_activations": None,
                        "output_activations": None,
                        "targets": ["Linear"],
                        "weights": {
                            "actorder": None,
                            "block_structure": None,
                            "dynamic": False,
                            "group_size": self.group_size,
                            "num_bits": 4,
                            "observer": "minmax",
                            "observer_kwargs": {},
                            "strategy": "group",
                            "symmetric": True,
                            "type": "int",
                        },
                    }
                },
                "format": "pack-quantized",
                "ignore": list(self.ignore),
                "kv_cache_scheme": None,
                "quant_method": "compressed-tensors",
                "quantization_status": "compressed",
            }
        if self.format == "fp8":
            d: dict[str, Any] = {
                "activation_scheme": "dynamic",
                "fmt": "e4m3",
                "quant_method": "fp8",
                "weight_block_size": list(self.block),
            }
            if self.ignore:
                d["modules_to_not_convert"] = list(self.ignore)
            return d
        return None


# What K2-Thinking and K2.5 leave in bf16: everything except the routed experts.
KIMI_INT4_IGNORE = (
    "lm_head",
    r"re:.*self_attn.*",
    r"re:.*shared_experts.*",
    r"re:.*mlp\.(gate|up|gate_up|down)_proj.*",
)


def parse_quantization(q: dict[str, Any] | None) -> QuantConfig:
    """QuantConfig from config.json's `quantization_config`; unsupported schemes raise ConfigError."""
    if q is None:
        return QuantConfig()
    if not isinstance(q, dict):
        raise ConfigError(f"quantization_config must be an object, got {q!r}")
    method = q.get("quant_method")
    if method == "compressed-tensors":
        return _parse_compressed_tensors(q)
    if method == "fp8":
        return _parse_fp8(q)
    raise ConfigError(
        f"quantization_config.quant_method = {method!r} is not supported; "
        "supported: 'compressed-tensors' (pack-quantized INT4) and 'fp8' (block FP8)"
    )


def _parse_compressed_tensors(q: dict[str, Any]) -> QuantConfig:
    fmt = q.get("format")
    if fmt != "pack-quantized":
        raise ConfigError(
            f"quantization_config.format = {fmt!r} is not supported; only 'pack-quantized' INT4 "
            "(Kimi K2-Thinking / K2.5) is"
        )
    groups = q.get("config_groups") or {}
    if len(groups) != 1:
        raise ConfigError(f"quantization_config.config_groups has {len(groups)} groups; exactly one is supported")
    ((gname, group),) = groups.items()
    w = group.get("weights") or {}
    where = f"quantization_config.config_groups.{gname}.weights"
    expected = {"num_bits": 4, "type": "int", "strategy": "group", "symmetric": True}
    for key, want in expected.items():
        if w.get(key) != want:
            raise ConfigError(f"{where}.{key} = {w.get(key)!r} is not supported; expected {want!r}")
    for key in ("input_activations", "output_activations"):
        if group.get(key) is not None:
            raise ConfigError(
                f"quantization_config.config_groups.{gname}.{key} = {group[key]!r}: activation quantization "
                "is not supported (weight-only INT4 is)"
            )
    targets = group.get("targets", ["Linear"])
    if targets != ["Linear"]:
        raise ConfigError(f"quantization_config.config_groups.{gname}.targets = {targets!r}; expected ['Linear']")
    gs = w.get("group_size")
    if not isinstance(gs, int) or gs <= 0 or gs % 8:
        raise ConfigError(f"{where}.group_size = {gs!r}; expected a positive multiple of 8 (Kimi uses 32)")
    ignore = q.get("ignore") or []
    return QuantConfig(format="int4", group_size=gs, ignore=tuple(ignore))


def _parse_fp8(q: dict[str, Any]) -> QuantConfig:
    fmt = q.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise ConfigError(f"quantization_config.fmt = {fmt!r} is not supported; expected 'e4m3'")
    scheme = q.get("activation_scheme", "dynamic")
    if scheme != "dynamic":
        raise ConfigError(f"quantization_config.activation_scheme = {scheme!r}; only 'dynamic' is supported")
    block = q.get("weight_block_size")
    if not (isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
        raise ConfigError(
            f"quantization_config.weight_block_size = {block!r}; expected two positive ints such as [128, 128]"
        )
    ignore = list(q.get("modules_to_not_convert") or [])
    if "lm_head" not in ignore:
        ignore.append("lm_head")  # never FP8 in DeepSeek-V3 / K2 checkpoints
    return QuantConfig(format="fp8", block=(block[0], block[1]), ignore=tuple(ignore))
