"""make_plan: where every byte goes and how fast decode can be, from the model, the machine and the run alone."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from offload.config import ModelConfig
from offload.errors import OffloadError
from offload.experts.config import OffloadConfig
from offload.experts.cost import CostModel
from offload.planner.profile import Profile
from offload.planner.sizes import (
    GpuWeights,
    WeightFormat,
    attention_flops_per_token,
    expert_params,
    part_params,
    prefill_attention_flops,
    routed_scratch,
    workspace,
    workspace_peak,
)
from offload.storage import Storage

GiB = 1 << 30
CHUNK = 1024  # suggested context lengths are rounded down to this
# The process itself, whatever the RAM: inside a 2.1 GB cgroup a CPU bench run held 0.25 GB of anonymous memory and
# ~0.35 GB of page cache beyond the experts and weights it maps (torch's and Python's libraries, charged to the
# group like any file); with a 0.2 GB reserve (10%) the group sat at its limit and the kernel's reclaim took expert
# pages the store counted as resident (28,000 major faults, decode 2.9 against 3.8 tok/s with room to spare).
RAM_RESERVE_MIN_GIB = 1.0


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """What this run wants. The CLI builds it; the defaults live here only."""

    context: int = 32768  # tokens of KV cache to reserve
    gpu_weights: GpuWeights = "bf16"  # format of the non-expert weights on the GPU
    lm_head: Literal["gpu", "cpu"] = "gpu"
    device: Literal["auto", "cpu", "cuda"] = "auto"  # cpu: plan for the CPU alone even when the machine has a GPU
    dtype: Literal["bfloat16", "float32"] = "bfloat16"  # compute dtype (and that of the weights the CPU converts)
    gpu_reserve_gib: float = 1.0  # CUDA context, allocator slack
    workspace_gib: float | None = None  # activations and prefill scratch where the model computes; None: derived
    # from the model's shape, the prefill chunk and the context (planner.sizes.workspace)
    ram_reserve_gib: float | None = None  # OS, Python, torch, the tensor index; None: 10% of RAM, at most 8 GiB and
    # at least RAM_RESERVE_MIN_GIB
    prefill_chunk: int = 4096  # tokens per prefill step
    expert_bpw: float | None = None  # what-if: bits per routed-expert weight, scales included; None = as stored
    gpu_slots: int | None = None  # GPU expert slots; None: as many as the free GPU memory holds
    ram_budget_gb: float | None = None  # RAM for routed experts (GB, 1e9 B); None: all the RAM the rest leaves
    prefetch: bool = True  # read the next layer's predicted experts ahead of use
    prefetch_mode: Literal["advise", "read"] = "advise"  # advise: kernel readahead; read: reads on a worker thread
    cpu_weights: Literal["bf16", "int8"] = "bf16"  # non-expert Linears on the CPU: bf16, or int8 (Q8_0, native kernel)
    threads: int | None = None  # CPU threads for torch and the native kernels (one OpenMP pool); None: torch's default
    expert_profile: str | None = None  # a routing profile (JSON, `bench --save-expert-profile`): under a RAM budget
    # its hottest experts are read at load time and held; the engine reads it, the plan only carries the path

    def __post_init__(self) -> None:
        if self.context < 1:
            raise OffloadError(f"context = {self.context}; reserve at least one token")
        if self.gpu_weights not in ("bf16", "int8"):
            raise OffloadError(f"gpu_weights = {self.gpu_weights!r}; choose bf16 or int8")
        if self.lm_head not in ("gpu", "cpu"):
            raise OffloadError(f"lm_head = {self.lm_head!r}; choose gpu or cpu")
        if self.device not in ("auto", "cpu", "cuda"):
            raise OffloadError(f"device = {self.device!r}; choose auto, cpu or cuda")
        if self.gpu_slots is not None and self.gpu_slots < 0:
            raise OffloadError(f"gpu_slots = {self.gpu_slots}; give 0 or more")
        if self.ram_budget_gb is not None and self.ram_budget_gb <= 0:
            raise OffloadError(f"ram_budget_gb = {self.ram_budget_gb}; give a positive size in GB")
        if self.dtype not in ("bfloat16", "float32"):
            raise OffloadError(f"dtype {self.dtype!r} is not supported; choose one of bfloat16, float32")
        if self.prefetch_mode not in ("advise", "read"):
            raise OffloadError(f"prefetch_mode = {self.prefetch_mode!r}; choose advise or read")
        if min(self.gpu_reserve_gib, self.workspace_gib or 0, self.ram_reserve_gib or 0) < 0:
            raise OffloadError("reserves and workspace must be >= 0")
        if self.prefill_chunk < 1:
            raise OffloadError(f"--prefill-chunk {self.prefill_chunk}: a prefill pass takes at least 1 token")
        if self.cpu_weights not in ("bf16", "int8"):
            raise OffloadError(f"--cpu-weights {self.cpu_weights!r}: choose bf16 or int8")
        if self.threads is not None and self.threads < 1:
            raise OffloadError(f"--threads {self.threads}: give 1 or more")
        if self.expert_bpw is not None and not 1 <= self.expert_bpw <= 16:
            raise OffloadError(f"expert_bpw = {self.expert_bpw}; expected bits per weight between 1 and 16")


@dataclass(frozen=True, slots=True)
class Placement:
    """One part of the model: where it lives, in which format, how many bytes."""

    part: str
    where: Literal["gpu", "ram", "mmap"]  # mmap: read from the checkpoint through the page cache
    fmt: str
    nbytes: int


_NOT_IN_DICT = ("config", "storage", "profile", "runtime", "placements", "offload", "cost")


@dataclass(frozen=True, slots=True)
class Plan:
    """The arithmetic `plan` prints and the runtime obeys. Byte counts are exact; speeds are ceilings."""

    model: str
    config: ModelConfig
    storage: Storage
    profile: Profile
    runtime: RuntimeConfig
    on_gpu: bool
    placements: tuple[Placement, ...]
    expert_bytes: int  # one routed expert's weights and scales
    n_experts: int  # routed experts in all MoE layers
    routed_expert_bytes: int
    routed_bytes_per_token: int
    kv_bytes_per_token: int
    gpu_budget: dict[str, int]  # part -> bytes on the GPU (weights, kv_cache, workspace, reserve, expert_slots)
    gpu_expert_slots: int
    ram_budget: dict[str, int]  # what RAM holds besides the experts' page cache, and that cache
    ram_expert_bytes: int  # routed expert bytes served from RAM (the page cache), GPU-slot copies not counted
    shares: dict[str, float]  # fraction of routed experts in GPU slots / RAM / only on disk (uniform routing)
    per_token_bytes: dict[str, int]  # decode bytes read per token from each link
    seconds_per_token: dict[str, float]  # each resource's decode time per token if it were alone
    decode_tok_s_ceiling: float
    decode_tok_s_serial: float  # with no overlap between resources
    limited_by: str
    prefill_tok_s: float  # a prompt of one chunk (prefill_chunk tokens, or the context if shorter)
    prefill_limited_by: str
    prefill_full_tok_s: float  # a prompt that fills the context, in chunks
    prefill_attention_share: float  # attention's fraction of that prompt's FLOPs (it grows with the square)
    kv_reuse_bytes: int  # default RAM for finished sequences' caches (prefix reuse): one context, or what is left
    max_context: int  # the longest context that fits with everything else unchanged
    fits: bool
    offload: OffloadConfig  # what the expert runtime may use, as planned
    cost: CostModel  # per-expert CPU / GPU costs from the profile's rates
    problems: tuple[str, ...] = ()
    suggestions: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def gpu_bytes(self) -> int:
        return sum(self.gpu_budget.values())

    @property
    def ram_bytes(self) -> int:
        return sum(self.ram_budget.values())

    def refusal(self) -> str:
        """The one message a run that does not fit stops with: the numbers and what to change."""
        tries = f"; any of these fits: {' | '.join(self.suggestions)}" if self.suggestions else ""
        return "; ".join(self.problems) + tries

    def replan(self, profile: Profile | None = None, **runtime: Any) -> Plan:
        """The same model planned again on other rates (`profile`) or with runtime fields changed."""
        rt = replace(self.runtime, **runtime)
        return make_plan(self.model, self.config, self.storage, profile or self.profile, rt, suggest=False)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in _NOT_IN_DICT}
        out.update(
            profile=self.profile.name,
            runtime=asdict(self.runtime),
            gpu_bytes=self.gpu_bytes,
            ram_bytes=self.ram_bytes,
            placements=[asdict(p) for p in self.placements],
            offload=asdict(self.offload),
            problems=list(self.problems),
            suggestions=list(self.suggestions),
            warnings=list(self.warnings),
        )
        return out


def _expert_fmt(storage: Storage, rt: RuntimeConfig) -> str:
    if rt.expert_bpw is not None:
        return f"{rt.expert_bpw:g} bpw (what-if)"
    return storage.expert_label


def _longest(fits: Callable[[int], bool], cfg: ModelConfig) -> int:
    """The longest context (up to the model's) for which fits(context) holds; 0 if none. fits is monotone but for
    the workspace's rounding (a head group, a query block), a few bytes against a token's KV cache."""
    lo, hi = 0, cfg.max_position_embeddings
    if fits(hi):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo if lo and fits(lo) else 0


def make_plan(
    model: str, cfg: ModelConfig, storage: Storage, profile: Profile, rt: RuntimeConfig, suggest: bool = True
) -> Plan:
    """Pure arithmetic: no I/O, no torch. `storage` is how the checkpoint stores the model (its bytes, and the
    experts' format: only formats the fused kernels read go into GPU slots). Uniform routing is assumed (a trained
    router's skew only helps). `suggest`: also try the flag changes that would make a refused plan fit (each one
    re-planned)."""
    on_gpu = profile.has_gpu and rt.device != "cpu"
    cpu_fmt: WeightFormat = "f32" if rt.dtype == "float32" else "bf16"
    params = part_params(cfg)
    stored = storage.part_bytes
    n_moe, k = len(cfg.moe_layers), cfg.num_experts_per_tok
    eb = storage.expert_weight_bytes if rt.expert_bpw is None else math.ceil(expert_params(cfg) * rt.expert_bpw / 8)
    n_experts = n_moe * cfg.n_routed_experts
    routed, per_token = eb * n_experts, eb * k * n_moe
    kv_tok = cfg.kv_bytes_per_token()
    kv = kv_tok * rt.context
    tied = cfg.tie_word_embeddings

    # ---- placement: the GPU takes every non-expert part but the embedding (one row a token) -------------------
    gpu_parts = [p for p in params if on_gpu and p != "embed" and not (p == "lm_head" and rt.lm_head == "cpu")]
    placements = [
        Placement(p, "gpu", rt.gpu_weights if params[p].linear else "bf16", params[p].nbytes(rt.gpu_weights))
        for p in gpu_parts
    ]
    for p in params:
        if p in gpu_parts:
            continue
        if p == "embed":  # rows are dequantized (or cast) when looked up: the stored tensor itself, zero-copy
            placements.append(Placement(p, "ram", storage.float_format, stored[p]))
        elif p == "lm_head" and tied:  # the embedding again: no second copy
            placements.append(Placement(p, "ram", "tied to embed", 0))
        elif p in storage.ggml_parts and rt.dtype != "float32":  # a GGUF's ggml Linears, kept as stored (mapped)
            dense = 2 * params[p].dense_linear  # but kv_b, made dense in bf16
            placements.append(Placement(p, "ram", "as stored", stored[p] + dense))
        elif rt.cpu_weights == "int8" and rt.dtype != "float32" and params[p].linear:  # Q8_0 at load (native kernel)
            placements.append(Placement(p, "ram", "q8_0", params[p].nbytes("q8_0")))
        else:  # in the CPU compute dtype: zero-copy when stored so, a converted copy otherwise (FP8, f32)
            placements.append(Placement(p, "ram", cpu_fmt, params[p].nbytes(cpu_fmt)))
    placements.append(Placement("routed_experts", "mmap", _expert_fmt(storage, rt), routed))
    placements.append(Placement("kv_cache", "gpu" if on_gpu else "ram", "bf16", kv))
    gpu_weights = {p.part: p.nbytes for p in placements if p.where == "gpu" and p.part != "kv_cache"}
    ram_weights = {p.part: p.nbytes for p in placements if p.where == "ram" and p.part != "kv_cache"}

    # ---- workspace: one prefill chunk's peak scratch (or the runtime's own figure) ---------------------------------
    chunk = min(rt.prefill_chunk, rt.context)
    pairs = chunk * k if n_moe else 0  # a chunk's routed (token, expert) pairs
    esz = 4 if rt.dtype == "float32" else 2

    def scratch(pairs_share: float, context: int = rt.context) -> int:
        """Where the model computes: the peak of a chunk over `context` keys (a chunk is at most the context) of
        whose routed pairs `pairs_share` run on that device (or the runtime's own figure)."""
        if rt.workspace_gib is not None:
            return int(rt.workspace_gib * GiB)
        c = min(rt.prefill_chunk, context)
        return workspace_peak(workspace(cfg, c, context, esz, math.ceil(c * k * pairs_share) if n_moe else 0))

    # ---- GPU budget ------------------------------------------------------------------------------------------
    gpu_budget: dict[str, int] = {}
    slots = 0
    if on_gpu:
        fixed = {**gpu_weights, "kv_cache": kv, "workspace": scratch(0.0), "reserve": int(rt.gpu_reserve_gib * GiB)}
        if rt.gpu_slots is not None:
            slots = min(rt.gpu_slots, n_experts)
        elif storage.fused_experts or rt.expert_bpw is not None:  # a what-if plans for a slot format
            slots = max(0, min(n_experts, (profile.gpu_bytes - sum(fixed.values())) // eb))
            # the pairs the slots serve (their share, uniform routing) need scratch too: fewer slots until it fits;
            # each step's workspace is no larger than the last one's, so the last slot count fits with its own
            for _ in range(3):
                fixed["workspace"] = scratch(slots * eb / routed)
                slots = min(slots, max(0, (profile.gpu_bytes - sum(fixed.values())) // eb))
        if rt.gpu_slots is not None:
            fixed["workspace"] = scratch(slots * eb / routed)
        gpu_budget = {**fixed, "expert_slots": slots * eb}

    # ---- RAM budget: fixed needs first, the rest is page cache for routed experts ------------------------------
    reserve_gib = rt.ram_reserve_gib
    if reserve_gib is None:
        reserve_gib = max(RAM_RESERVE_MIN_GIB, min(8.0, 0.1 * profile.ram_gib))
    ram_fixed = {"reserve": int(reserve_gib * GiB), **ram_weights}
    if on_gpu:
        ram_fixed["pinned_staging"] = 2 * k * eb  # double buffer for one layer's experts on their way to the GPU
        ram_fixed["workspace"] = routed_scratch(cfg, chunk, pairs)  # the CPU experts' (all pairs: worst case)
    else:
        ram_fixed["kv_cache"] = kv
        ram_fixed["workspace"] = scratch(1.0)
    ram_left = max(0, profile.ram_bytes - sum(ram_fixed.values()))
    page_cache = ram_left if rt.ram_budget_gb is None else int(rt.ram_budget_gb * 1e9)
    ram_budget = {**ram_fixed, "expert_page_cache": page_cache}

    g = slots * eb / routed  # GPU slots and RAM hold different experts: no point keeping both copies hot
    r = min(1.0 - g, page_cache / routed)
    d = max(0.0, 1.0 - g - r)
    shares = {"gpu": g, "ram": r, "disk": d}
    # finished sequences' caches live in RAM: what the experts leave of the page cache, and at least one context
    kv_reuse_bytes = max(kv, page_cache - round(r * routed))

    # ---- decode: bytes per token on each link, and the time each resource needs for them ------------------------
    h = cfg.hidden_size
    lm_read = params["lm_head"].nbytes(cpu_fmt) if tied else 0  # a tied head reads the embedding in full
    cpu_read = (
        sum(v for p, v in ram_weights.items() if p != "embed") + 2 * h + (lm_read if "lm_head" in ram_weights else 0)
    )
    active_nonexpert = sum(v.params for p, v in params.items() if p != "embed")
    attn_flops = attention_flops_per_token(cfg, rt.context)
    per = {
        "gpu": (sum(gpu_weights.values()) + kv + round(g * per_token)) if on_gpu else 0,
        "dram": cpu_read + (0 if on_gpu else kv) + round((r + d) * per_token),
        "nvme": round(d * per_token),
        "pcie": (2 * 2 * h * n_moe + (2 * h if rt.lm_head == "cpu" else 0)) if on_gpu else 0,
    }
    cpu_flops = 2 * expert_params(cfg) * k * n_moe * (r + d)
    if not on_gpu:
        cpu_flops += 2 * active_nonexpert + attn_flops
    elif rt.lm_head == "cpu":
        cpu_flops += 2 * params["lm_head"].params
    secs = {
        "GPU": (per["gpu"] / (profile.gpu_bandwidth_gbs * 1e9) + attn_flops / (profile.gpu_tflops * 1e12))
        if on_gpu
        else 0.0,
        "DRAM": per["dram"] / (profile.dram_gbs * 1e9),
        "NVMe": per["nvme"] / (profile.nvme_gbs * 1e9),
        "PCIe": per["pcie"] / (profile.pcie_gbs * 1e9) if on_gpu else 0.0,
        "CPU": cpu_flops / (profile.cpu_gflops * 1e9),
    }
    limited_by = max(secs, key=lambda key: secs[key])
    ceiling = 1.0 / secs[limited_by]
    serial = 1.0 / sum(secs.values())

    # ---- prefill: a chunk uses nearly every expert of a layer; on a GPU they are copied and run there ----------
    # A prompt of n tokens runs in chunks of rt.prefill_chunk: each chunk reads the experts it uses (and, on the
    # CPU, the other weights) again, and attention's FLOPs grow with n squared whatever the chunking.
    def prefill(n: int) -> tuple[dict[str, float], float]:
        """Each resource's seconds for an n-token prompt, and attention's share of its FLOPs."""
        chunk = min(rt.prefill_chunk, n)
        sizes = [chunk] * (n // chunk) + ([n % chunk] if n % chunk else [])
        used = sum(1.0 - (1.0 - k / cfg.n_routed_experts) ** c for c in sizes)  # expert reads, in layers' worth
        attn = prefill_attention_flops(cfg, n)
        flops = 2.0 * (active_nonexpert + k * n_moe * expert_params(cfg)) * n + attn
        pre = {
            "NVMe": d * routed * used / (profile.nvme_gbs * 1e9),
            "DRAM": ((r + d) * routed * used + (0 if on_gpu else cpu_read * len(sizes))) / (profile.dram_gbs * 1e9),
        }
        if on_gpu:
            pre["PCIe"] = (1.0 - g) * routed * used / (profile.pcie_gbs * 1e9)
            pre["GPU"] = flops / (profile.gpu_tflops * 1e12)
        else:
            pre["CPU"] = flops / (profile.cpu_gflops * 1e9)
        return pre, attn / flops

    p_tok = min(rt.prefill_chunk, rt.context)
    pre, _ = prefill(p_tok)
    prefill_limited_by = max(pre, key=lambda key: pre[key])
    prefill_tok_s = p_tok / pre[prefill_limited_by]
    full, prefill_attention_share = prefill(rt.context)
    prefill_full_tok_s = rt.context / max(full.values())

    # ---- does it fit ------------------------------------------------------------------------------------------
    problems: list[str] = []
    if on_gpu and rt.gpu_slots and not storage.fused_experts and rt.expert_bpw is None:
        problems.append(
            f"--gpu-slots {rt.gpu_slots}: GPU slots hold INT4 group-32 experts, and this checkpoint's "
            f"experts are {storage.expert_label}; run with --gpu-slots 0"
        )
    if rt.device == "cuda" and not profile.has_gpu:
        problems.append(f"--device cuda, but the profile {profile.name} has no GPU")
    if (
        on_gpu
        and rt.gpu_slots is not None
        and gpu_budget["expert_slots"]
        > profile.gpu_bytes - sum(v for key, v in gpu_budget.items() if key != "expert_slots")
    ):
        free_gib = (profile.gpu_bytes - sum(v for key, v in gpu_budget.items() if key != "expert_slots")) / GiB
        problems.append(
            f"{slots} GPU expert slots need {slots * eb / GiB:.2f} GiB; {max(0.0, free_gib):.2f} GiB "
            f"of GPU memory is left for them (--gpu-slots {max(0, int(free_gib * GiB // eb))} fits)"
        )
    if rt.context > cfg.max_position_embeddings:
        problems.append(
            f"context {rt.context:,} exceeds the model's max_position_embeddings {cfg.max_position_embeddings:,}"
        )
    if on_gpu:
        gpu_fixed = sum(v for key, v in gpu_budget.items() if key != "expert_slots")
        others = gpu_fixed - kv - gpu_budget["workspace"]
        max_context = _longest(lambda c: others + kv_tok * c + scratch(0.0, c) <= profile.gpu_bytes, cfg)
        if gpu_fixed > profile.gpu_bytes:
            problems.append(
                f"needs {gpu_fixed / GiB:.1f} GiB of GPU memory (weights {sum(gpu_weights.values()) / GiB:.1f}, "
                f"KV cache {kv / GiB:.1f} for {rt.context:,} tokens, workspace and reserve "
                f"{(gpu_budget['workspace'] + gpu_budget['reserve']) / GiB:.1f}), the profile has "
                f"{profile.gpu_memory_gib:g} GiB"
            )
    else:
        others = sum(ram_fixed.values()) - kv - ram_fixed["workspace"]
        max_context = _longest(lambda c: others + kv_tok * c + scratch(1.0, c) <= profile.ram_bytes, cfg)
    ram_needed = sum(ram_fixed.values())
    if ram_needed > profile.ram_bytes:
        problems.append(
            f"needs {ram_needed / GiB:.1f} GiB of RAM before any expert is cached (reserve "
            f"{reserve_gib:g}, weights kept in RAM {sum(ram_weights.values()) / GiB:.1f}), "
            f"the profile has {profile.ram_gib:g} GiB"
        )
    suggestions = _suggestions(model, cfg, storage, profile, rt) if problems and suggest else []

    warnings: list[str] = []
    if rt.ram_budget_gb is not None and page_cache > ram_left:
        warnings.append(
            f"--ram-budget {rt.ram_budget_gb:g} GB is more than the {ram_left / 1e9:.1f} GB of RAM the "
            "rest of the plan leaves: the OS will evict expert pages before the budget does"
        )
    if d > 0:
        warnings.append(
            f"{d:.0%} of the routed experts do not fit in RAM: about {per['nvme'] / 1e9:.2f} GB per "
            f"token come from disk at {profile.nvme_gbs:g} GB/s"
        )
    if on_gpu and not storage.fused_experts and rt.expert_bpw is None:
        warnings.append(
            f"no GPU expert slots: they hold INT4 group-32 experts, this checkpoint's are "
            f"{storage.expert_label}; routed experts run on the CPU"
        )
    elif on_gpu and slots < k * n_moe:
        warnings.append(
            f"{slots} GPU expert slots: fewer than one token's {k * n_moe} experts; decode computes "
            "almost every expert on the CPU"
        )
    if rt.expert_bpw is not None:
        warnings.append(
            f"what-if: routed experts at {rt.expert_bpw:g} bits per weight; this runtime reads the "
            "checkpoint's own format (K2.5: INT4 group 32, bf16 scales: 4.5 bits per weight)"
        )
    if profile.source == "auto":
        assumed = [f for f in ("dram_gbs", "nvme_gbs", "pcie_gbs", "cpu_gflops") if f not in profile.measured]
        if assumed:
            warnings.append(f"assumed, not measured, on this machine: {', '.join(assumed)}")

    offload = OffloadConfig(
        ram_budget=None if page_cache >= routed else max(1, page_cache),
        gpu_slots=slots if on_gpu else 0,
        prefetch=rt.prefetch,
        prefetch_mode=rt.prefetch_mode,
        device="cuda" if on_gpu else "cpu",
    )
    cost = CostModel(
        eb,
        expert_params(cfg),
        profile.dram_gbs,
        profile.nvme_gbs,
        profile.cpu_gflops,
        profile.pcie_gbs if on_gpu else 0.0,
        profile.gpu_tflops if on_gpu else 0.0,
    )
    return Plan(
        model=model,
        config=cfg,
        storage=storage,
        profile=profile,
        runtime=rt,
        on_gpu=on_gpu,
        placements=tuple(placements),
        expert_bytes=eb,
        n_experts=n_experts,
        routed_expert_bytes=routed,
        routed_bytes_per_token=per_token,
        kv_bytes_per_token=kv_tok,
        gpu_budget=gpu_budget,
        gpu_expert_slots=slots,
        ram_budget=ram_budget,
        ram_expert_bytes=round(r * routed),
        shares=shares,
        per_token_bytes=per,
        seconds_per_token=secs,
        decode_tok_s_ceiling=ceiling,
        decode_tok_s_serial=serial,
        limited_by=limited_by,
        prefill_tok_s=prefill_tok_s,
        prefill_limited_by=prefill_limited_by,
        prefill_full_tok_s=prefill_full_tok_s,
        prefill_attention_share=prefill_attention_share,
        kv_reuse_bytes=kv_reuse_bytes,
        max_context=max_context,
        fits=not problems,
        offload=offload,
        cost=cost,
        problems=tuple(problems),
        suggestions=tuple(suggestions),
        warnings=tuple(warnings),
    )


# flag sets to try on a refused plan, cheapest first
_VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("", {}),
    ("--gpu-weights int8", {"gpu_weights": "int8"}),
    ("--lm-head cpu", {"lm_head": "cpu"}),
    ("--gpu-weights int8 --lm-head cpu", {"gpu_weights": "int8", "lm_head": "cpu"}),
    ("--device cpu", {"device": "cpu"}),
]


def _suggestions(
    model: str, cfg: ModelConfig, storage: Storage, profile: Profile, rt: RuntimeConfig, most: int = 4
) -> list[str]:
    """Flag sets that make the plan fit, each verified by planning again: as they are, or with the largest
    context that then fits (a multiple of CHUNK)."""
    out: list[str] = []
    context = min(rt.context, cfg.max_position_embeddings)
    for flags, change in _VARIANTS:
        if all(getattr(rt, key) == value for key, value in change.items()) and flags:
            continue  # already set
        trial = replace(rt, context=context, **change)
        plan = make_plan(model, cfg, storage, profile, trial, suggest=False)
        if not plan.fits and plan.max_context >= CHUNK:
            trial = replace(trial, context=min(context, plan.max_context // CHUNK * CHUNK))
            plan = make_plan(model, cfg, storage, profile, trial, suggest=False)
        if plan.fits:
            ctx = f"--context {trial.context}" if trial.context != rt.context else ""
            out.append(" ".join(x for x in (flags, ctx) if x))
        if len(out) == most:
            break
    return out
