"""The plan is the runtime's one source of settings: what it hands the expert runtime fits the checkpoint's format.

Regression: on a GPU machine with default flags, FP8 and bf16 checkpoints (K2-Instruct, DeepSeek-V3) were planned GPU
expert slots, which only INT4 group-32 experts can use, and the expert runtime refused to start.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from offload.checkpoint import open_checkpoint
from offload.experts.dequantized import DequantizedExperts
from offload.experts.offloaded import OffloadedExperts
from offload.planner.plan import RuntimeConfig, make_plan
from tests.harness import greedy, loaded
from tests.test_planner import BOX


@pytest.mark.parametrize("experts", ["int4", "fp8", "bf16"])
def test_gpu_plan_loads_every_expert_format_with_default_flags(tiny_dirs, experts):
    folder = tiny_dirs[("k2", experts)]
    with open_checkpoint(folder) as ckpt:
        plan = make_plan(str(folder), ckpt.config, ckpt.storage, BOX, RuntimeConfig(context=256, device="cuda"))
    assert plan.fits and plan.on_gpu and plan.offload.device == "cuda"
    if experts == "int4":  # the tiny model's experts all fit the free GPU memory
        assert plan.gpu_expert_slots == plan.n_experts == plan.offload.gpu_slots > 0
    else:
        assert plan.gpu_expert_slots == plan.offload.gpu_slots == 0 and plan.gpu_budget["expert_slots"] == 0
        assert any("no GPU expert slots" in w for w in plan.warnings)
    # the plan's own offload config and cost model, with the slot pool in RAM (the GPU logic, run on the CPU)
    offload = replace(plan.offload, device="cpu")
    with loaded(folder, lambda c: DequantizedExperts(c, torch.float32)) as (model, _):
        want = greedy(model, steps=4)
    with loaded(folder, lambda c: OffloadedExperts(c, torch.float32, offload, plan.cost)) as (model, runtime):
        got = greedy(model, steps=4)
        assert isinstance(runtime, OffloadedExperts)
        assert (runtime.slots is not None) == (experts == "int4")
    assert got[0] == want[0] and torch.allclose(got[1], want[1], atol=1e-4)
    if experts == "int4":
        assert runtime.stats().phases["decode"].from_gpu > 0  # the slots did serve experts


@pytest.mark.parametrize("experts", ["fp8", "bf16"])
def test_gpu_slots_asked_for_a_format_they_cannot_hold_is_refused_by_the_plan(tiny_dirs, experts):
    folder = tiny_dirs[("k2", experts)]
    with open_checkpoint(folder) as ckpt:
        plan = make_plan(str(folder), ckpt.config, ckpt.storage, BOX, RuntimeConfig(context=256, gpu_slots=4))
    assert not plan.fits and "--gpu-slots 0" in plan.refusal()
