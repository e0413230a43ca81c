"""The plan as text: sections of (label, value) rows for `plan`, and the few lines the runtime prints at start."""

from __future__ import annotations

from offload.planner.plan import GiB, Plan

Rows = list[tuple[str, str]]


def gib(n: float) -> str:
    """Memory sizes, binary units."""
    return f"{n / GiB:,.2f} GiB" if n >= GiB / 100 or n == 0 else f"{n / (1 << 20):,.2f} MiB"


def gb(n: float) -> str:
    """Traffic, decimal units (bandwidths are GB/s)."""
    return f"{n / 1e9:,.2f} GB" if n >= 1e7 or n == 0 else f"{n / 1e6:,.2f} MB"


def plan_sections(plan: Plan) -> list[tuple[str, Rows]]:
    """Every number `plan` prints, grouped; each comes straight from a Plan field."""
    p, rt = plan.profile, plan.runtime
    model: Rows = [
        (
            "routed experts",
            f"{plan.n_experts:,} x {plan.expert_bytes:,} B = {gb(plan.routed_expert_bytes)} "
            f"({gib(plan.routed_expert_bytes)})",
        ),
        (
            "routed per token",
            f"{plan.routed_bytes_per_token // plan.expert_bytes} experts = {gb(plan.routed_bytes_per_token)}",
        ),
        (
            "KV cache",
            f"{plan.kv_bytes_per_token:,} B per token x {rt.context:,} tokens = "
            f"{gib(plan.kv_bytes_per_token * rt.context)}",
        ),
    ]
    placement: Rows = [(f"{pl.part}", f"{pl.where:<4} {pl.fmt:<22} {gib(pl.nbytes):>12}") for pl in plan.placements]
    sections: list[tuple[str, Rows]] = [(f"{plan.model} on {p.name}", model), ("placement", placement)]
    if plan.on_gpu:
        gpu: Rows = [(k, gib(v)) for k, v in plan.gpu_budget.items()]
        gpu.append(("total", f"{gib(plan.gpu_bytes)} of {gib(p.gpu_bytes)}"))
        gpu.append(("slots", f"{plan.gpu_expert_slots:,} experts ({plan.shares['gpu']:.2%} of routed experts)"))
        sections.append((f"GPU ({p.gpu_name or 'GPU'}, {p.gpu_memory_gib:g} GiB)", gpu))
    ram: Rows = [(k, gib(v)) for k, v in plan.ram_budget.items()]
    ram.append(("total", f"{gib(plan.ram_bytes)} of {gib(p.ram_bytes)}"))
    ram.append(("experts resident", f"{plan.shares['ram']:.1%} in RAM, {plan.shares['disk']:.1%} only on disk"))
    sections.append((f"RAM ({p.ram_gib:g} GiB{': ' + p.ram_limit if p.ram_limit else ''})", ram))
    rates = {"GPU": p.gpu_bandwidth_gbs, "DRAM": p.dram_gbs, "NVMe": p.nvme_gbs, "PCIe": p.pcie_gbs}
    link = {"GPU": "gpu", "DRAM": "dram", "NVMe": "nvme", "PCIe": "pcie"}
    decode: Rows = []
    for res, secs in plan.seconds_per_token.items():
        if res == "CPU":
            decode.append(("CPU compute", f"{secs * 1e3:,.1f} ms at {p.cpu_gflops:,.0f} GFLOPS"))
        elif secs or plan.per_token_bytes[link[res]]:
            decode.append(
                (f"{res} reads", f"{gb(plan.per_token_bytes[link[res]])} at {rates[res]:g} GB/s = {secs * 1e3:,.1f} ms")
            )
    decode.append(("ceiling", f"{plan.decode_tok_s_ceiling:,.2f} tok/s, limited by {plan.limited_by}"))
    decode.append(("no overlap", f"{plan.decode_tok_s_serial:,.2f} tok/s"))
    sections.append(("decode, per token (at full context)", decode))
    sections.append(
        (
            "prefill",
            [
                (
                    "ceiling",
                    f"{plan.prefill_tok_s:,.0f} tok/s for a {min(rt.prefill_chunk, rt.context):,}-token prompt, "
                    f"limited by {plan.prefill_limited_by}",
                ),
                (
                    "full context",
                    f"{plan.prefill_full_tok_s:,.0f} tok/s for {rt.context:,} tokens in chunks of "
                    f"{min(rt.prefill_chunk, rt.context):,}; attention, quadratic in the prompt, is "
                    f"{plan.prefill_attention_share:.0%} of its FLOPs",
                ),
            ],
        )
    )
    verdict: Rows = [("fits", "yes" if plan.fits else "NO"), ("max context", f"{plan.max_context:,} tokens")]
    verdict += [("problem", t) for t in plan.problems] + [("try", t) for t in plan.suggestions]
    verdict += [("warning", t) for t in plan.warnings]
    sections.append(("verdict", verdict))
    return sections


def summary_lines(plan: Plan) -> list[str]:
    """One screen for the runtime's start: what goes where, the budgets, the ceiling."""
    p = plan.profile
    where = "GPU + CPU" if plan.on_gpu else "CPU only"
    lines = [
        f"plan: {plan.model} on {p.name} ({where}), context {plan.runtime.context:,} tokens",
        f"  routed experts {gb(plan.routed_expert_bytes)}: {plan.shares['gpu']:.0%} GPU slots, "
        f"{plan.shares['ram']:.0%} RAM, {plan.shares['disk']:.0%} disk",
    ]
    if plan.on_gpu:
        lines.append(f"  GPU {gib(plan.gpu_bytes)} of {gib(p.gpu_bytes)} ({plan.gpu_expert_slots:,} expert slots)")
    cache = plan.ram_budget.get("expert_page_cache", 0)
    lines.append(
        f"  RAM {gib(plan.ram_bytes - cache)} for weights and reserves, {gib(cache)} left as page cache "
        f"(of {gib(p.ram_bytes)})"
    )
    lines.append(
        f"  decode ceiling {plan.decode_tok_s_ceiling:,.1f} tok/s ({plan.limited_by}); "
        f"prefill ceiling {plan.prefill_tok_s:,.0f} tok/s ({plan.prefill_limited_by}), "
        f"{plan.prefill_full_tok_s:,.0f} at the full context (attention grows with the prompt's square)"
    )
    lines += [f"  warning: {w}" for w in plan.warnings]
    return lines
