"""The README's table of what each hardware preset can run: `plan` for every preset and expert size.

    python examples/plan_table.py [--model kimi-k2.5] [--context 32768]

For each preset it takes the first setting that fits (bf16 GPU weights; int8; int8 with lm_head on the CPU; the
CPU alone) and prints a Markdown row: the setting, the largest context, the decode ceiling and what limits it.
"""

from __future__ import annotations

import argparse

from offload.planner.plan import RuntimeConfig, make_plan
from offload.planner.profile import list_profiles
from offload.planner.shapes import SHAPES, resolve_model

SETTINGS = [
    ("bf16", {"gpu_weights": "bf16"}),
    ("int8", {"gpu_weights": "int8"}),
    ("int8, lm_head cpu", {"gpu_weights": "int8", "lm_head": "cpu"}),
    ("CPU only", {"device": "cpu"}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="kimi-k2.5", choices=SHAPES)
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--bpw", type=float, nargs="*", default=[None, 2.5, 1.8], help="expert bits per weight")
    args = ap.parse_args()
    name, cfg, storage = resolve_model(args.model)
    cols = [
        "profile",
        "experts",
        "setting",
        "fits",
        "max context",
        "decode ceiling",
        "limited by",
        "in RAM",
        "in GPU slots",
        "prefill",
    ]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for prof in list_profiles():
        for bpw in args.bpw:
            for label, kw in SETTINGS:
                if label != "CPU only" and not prof.has_gpu:
                    continue
                rt = RuntimeConfig(context=args.context, expert_bpw=bpw, **kw)  # type: ignore[arg-type]
                plan = make_plan(name, cfg, storage, prof, rt)
                if plan.fits or label == "CPU only":
                    break
            experts = "as stored" if bpw is None else f"{bpw:g} bpw"
            print(
                f"| {prof.name} | {experts} | {label} | {'yes' if plan.fits else 'no'} | {plan.max_context:,} | "
                f"{plan.decode_tok_s_ceiling:.2f} tok/s | {plan.limited_by} | {plan.shares['ram']:.0%} | "
                f"{plan.shares['gpu']:.1%} | {plan.prefill_tok_s:,.0f} tok/s |"
            )


if __name__ == "__main__":
    main()
