"""CostModel (offload/experts/cost.py) against hand arithmetic: seconds per expert and where it should run."""

from __future__ import annotations

import pytest

from offload.experts.cost import CostModel

# Round numbers: 1 GB of weights, 1 GFLOP per token (2 * 5e8 params).
#   disk  1e9 / 10e9  = 0.1 s       RAM read 1e9 / 100e9 = 0.01 s      PCIe copy 1e9 / 20e9 = 0.05 s
#   CPU   1e9 / 1e12  = 1e-3 s/token                                   GPU 1e9 / 100e12 = 1e-5 s/token
ROUND = dict(
    expert_bytes=1_000_000_000,
    expert_params=500_000_000,
    dram_gbs=100.0,
    nvme_gbs=10.0,
    cpu_gflops=1000.0,
    pcie_gbs=20.0,
    gpu_tflops=100.0,
)

# Kimi K2.5: hidden 7168, MoE intermediate 2048; gate, up and down as INT4 (two per byte) with a bf16 scale per 32.
HIDDEN, INTER = 7168, 2048
K25_PARAMS = 3 * HIDDEN * INTER  # 44_040_192
K25_BYTES = 3 * (INTER * HIDDEN // 2 + INTER * HIDDEN // 32 * 2)  # 24_772_608
WORKSTATION = dict(dram_gbs=80.0, nvme_gbs=7.0, cpu_gflops=2000.0, pcie_gbs=25.0, gpu_tflops=165.0)


def round_model(**over: float) -> CostModel:
    return CostModel(**{**ROUND, **over})  # type: ignore[arg-type]


def k25() -> CostModel:
    return CostModel(expert_bytes=K25_BYTES, expert_params=K25_PARAMS, **WORKSTATION)


def test_k25_expert_size() -> None:
    assert K25_PARAMS == 44_040_192
    assert K25_BYTES == 24_772_608


def test_disk_s() -> None:
    m = round_model()
    assert m.disk_s(True) == 0.0
    assert m.disk_s(False) == pytest.approx(0.1)


def test_cpu_s() -> None:
    m = round_model()
    assert m.cpu_s(1, True) == pytest.approx(0.01 + 0.001)
    assert m.cpu_s(10, True) == pytest.approx(0.01 + 0.01)
    assert m.cpu_s(10, False) == pytest.approx(0.1 + 0.01 + 0.01)
    assert m.cpu_s(0, True) == pytest.approx(0.01)  # the weights are read even for no rows


def test_gpu_s() -> None:
    m = round_model()
    assert m.has_gpu
    assert m.gpu_s(10, False, True) == pytest.approx(0.05 + 1e-4)
    assert m.gpu_s(10, False, False) == pytest.approx(0.1 + 0.05 + 1e-4)
    assert m.gpu_s(10, True, True) == pytest.approx(1e-4)  # in a slot: no copy
    assert m.gpu_s(10, True, False) == pytest.approx(1e-4)  # ... and no disk read either
    assert m.gpu_s(1000, True, True) == pytest.approx(1e-2)


@pytest.mark.parametrize("tokens", [0, 1, 2, 40, 10_000])
@pytest.mark.parametrize("in_ram", [True, False])
def test_expert_in_slot_always_runs_on_gpu(tokens: int, in_ram: bool) -> None:
    # even when the CPU is far faster (1e6 GFLOP/s and RAM at 1e4 GB/s), a resident expert stays on the GPU
    for m in (round_model(), k25(), round_model(cpu_gflops=1e6, dram_gbs=1e4)):
        assert m.choose(tokens, True, in_ram) == "gpu"


@pytest.mark.parametrize("over", [dict(pcie_gbs=0.0), dict(gpu_tflops=0.0), dict(pcie_gbs=0.0, gpu_tflops=0.0)])
def test_no_gpu_always_cpu(over: dict[str, float]) -> None:
    m = round_model(**over)
    assert not m.has_gpu
    assert m.gpu_s(1, False, True) == float("inf")
    assert m.gpu_s(1, True, True) == float("inf")
    assert m.break_even_tokens() is None
    for tokens in (1, 41, 1000, 1_000_000):
        for in_ram in (True, False):
            assert m.choose(tokens, False, in_ram) == "cpu"


def test_round_break_even_by_hand() -> None:
    # GPU wins when 0.05 + 1e-5 t < 0.01 + 1e-3 t, i.e. t > 0.04 / 9.9e-4 = 40.4: t = 41.
    #   t = 40: GPU 0.0504 s vs CPU 0.0500 s (cpu);  t = 41: GPU 0.05041 s vs CPU 0.0510 s (gpu)
    m = round_model()
    assert m.break_even_tokens() == 41
    assert m.choose(40, False, True) == "cpu"
    assert m.choose(41, False, True) == "gpu"
    # a disk read adds the same 0.1 s to both sides: the same edge
    assert m.choose(40, False, False) == "cpu"
    assert m.choose(41, False, False) == "gpu"


def test_k25_decode_on_cpu_long_prefill_on_gpu() -> None:
    m = k25()
    # one token: CPU 24_772_608 / 80e9 + 88_080_384 / 2e12 = 309.7 us + 44.0 us = 353.7 us;
    #            GPU 24_772_608 / 25e9 + 88_080_384 / 165e12 = 990.9 us + 0.5 us = 991.4 us
    assert m.cpu_s(1, True) == pytest.approx(309.6576e-6 + 44.040192e-6)
    assert m.gpu_s(1, False, True) == pytest.approx(990.90432e-6 + 88_080_384 / 165e12)
    assert m.choose(1, False, True) == "cpu"
    assert m.choose(1, False, False) == "cpu"
    # 200 tokens: CPU 309.7 us + 8808.0 us; GPU 990.9 us + 106.8 us
    assert m.choose(200, False, True) == "gpu"
    assert m.choose(200, False, False) == "gpu"


def test_k25_break_even_by_hand() -> None:
    # gap = 990.904 us (PCIe) - 309.658 us (RAM) = 681.246 us; per token CPU 44.040 us, GPU 0.534 us;
    # 681.246 / (44.040 - 0.534) = 15.66, so the GPU first wins at t = 16:
    #   t = 15: CPU 970.3 us < GPU 998.9 us;  t = 16: CPU 1014.3 us > GPU 999.4 us
    m = k25()
    t = m.break_even_tokens()
    assert t == 16
    assert m.choose(t - 1, False, True) == "cpu"
    assert m.choose(t, False, True) == "gpu"


@pytest.mark.parametrize(
    "over",
    [
        {},
        dict(pcie_gbs=5.0),
        dict(cpu_gflops=50.0),
        dict(gpu_tflops=2.0),
        dict(expert_bytes=123_456_789, expert_params=7_777_777),
        dict(dram_gbs=33.3, pcie_gbs=12.7, cpu_gflops=777.0, gpu_tflops=3.3),
    ],
)
def test_break_even_is_smallest_gpu_token_count(over: dict[str, float]) -> None:
    m = round_model(**over)
    t = m.break_even_tokens()
    assert t is not None and t >= 1
    assert m.choose(t, False, True) == "gpu"
    assert all(m.choose(s, False, True) == "cpu" for s in range(1, t))
    assert m.choose(t + 1, False, True) == "gpu"  # and it stays there: GPU time grows more slowly


def test_break_even_is_one_when_pcie_beats_ram() -> None:
    # PCIe 200 GB/s vs RAM 100 GB/s: one token costs GPU 0.005 + 1e-5 s < CPU 0.01 + 1e-3 s
    m = round_model(pcie_gbs=200.0)
    assert m.break_even_tokens() == 1
    assert m.choose(1, False, True) == "gpu"


def test_break_even_none_when_cpu_computes_as_fast_as_gpu() -> None:
    # CPU at 1e5 GFLOP/s = GPU at 100 TFLOP/s: the copy never pays for itself
    m = round_model(cpu_gflops=1e5)
    assert m.has_gpu
    assert m.break_even_tokens() is None
    assert m.choose(1_000_000, False, True) == "cpu"


@pytest.mark.parametrize("over", [dict(dram_gbs=0.0), dict(nvme_gbs=0.0), dict(cpu_gflops=0.0), dict(dram_gbs=-1.0)])
def test_invalid_rates_raise(over: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        round_model(**over)
