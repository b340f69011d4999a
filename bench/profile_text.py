"""A side-by-side bench's op profile as text: each op's CPU-seconds on both sides, its FLOPs and rate, per kind.

    python bench/profile_text.py bench/results/radseg_fused_intel_emerald_rapids.json

Reads the JSON of ``bench/bench_radseg.py --profile`` (its ``profile``: :func:`bench_radseg.op_table`, and
``floor``: :func:`bench_radseg.floor_of`) and prints every op it lists, grouped by kind (products, attention,
elementwise and norms, copies and layouts, softmax and masks, resizes, the rest), with each side's estimated
CPU-seconds, calls, GFLOP and GFLOP/s where the op is a product or attention, then each side's totals and the floor.
The figures are the JSON's: this only lays them out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KINDS = (  # (kind, ATen names): an op is of the first kind that names it (its name after '::', a leading '_' off)
    ("attention", ("scaled_dot_product_flash_attention_for_cpu", "scaled_dot_product_attention_math",
                   "scaled_dot_product_attention")),
    ("products", ("addmm", "mm", "bmm", "baddbmm", "linear", "matmul", "mkl_linear", "linear_pointwise")),
    ("softmax, masks", ("softmax", "masked_fill_", "masked_fill", "lt", "gt", "ge", "le", "where", "max", "amax",
                        "scatter_reduce_", "index_put_impl_", "index", "threshold_", "threshold")),
    ("elementwise, norms", ("gelu", "gelu_", "mul", "mul_", "add", "add_", "addcmul_", "div", "div_", "sub", "rsub",
                            "native_layer_norm", "layer_norm", "linalg_vector_norm", "norm", "clamp_min", "exp")),
    ("resizes", ("upsample_bilinear2d", "upsample_bicubic2d", "grid_sampler_2d")),
    ("copies, layouts", ("copy_", "clone", "contiguous", "cat", "fill_", "zero_", "zeros", "new_zeros", "empty",
                         "empty_strided", "resize_", "to", "t", "view", "reshape", "permute", "transpose", "as_strided",
                         "expand", "slice", "select", "unbind", "unsqueeze", "flatten", "split", "narrow")),
)


def kind_of(op: str) -> str:
    """The kind of op ``op`` (``aten::gelu`` -> ``elementwise, norms``), ``other`` where no kind names it."""
    name = op.split("::")[-1]
    for kind, names in KINDS:
        if name in names or name.lstrip("_") in names:
            return kind
    return "other"


def _cell(o: dict | None) -> str:
    if o is None:
        return f"{'-':>8} {'':>5} {'':>8} {'':>6}"
    rate = f"{o['gflop'] / o['cpu_s']:6.1f}" if o.get("gflop") and o["cpu_s"] else f"{'':>6}"
    flop = f"{o['gflop']:8.3f}" if o.get("gflop") else f"{'':>8}"
    return f"{o['cpu_s']:8.4f} {o['calls']:5d} {flop} {rate}"


def text(result: dict) -> str:
    """The lines (module docstring) of one bench result with a profile."""
    table, sides = result["profile"], ("vpltool", "reference")
    lines = [f"{'op':<52} {'vpltool':^30} | {'reference':^30}",
             f"{'':<52} " + " | ".join(f"{'CPU-s':>8} {'calls':>5} {'GFLOP':>8} {'GF/s':>6}" for _ in sides)]
    for kind in [k for k, _ in KINDS] + ["other"]:
        rows = [r for r in table["ops"] if kind_of(r["op"]) == kind]
        if not rows:
            continue
        lines.append(f"-- {kind}")
        lines += [f"{r['op'][:52]:<52} " + " | ".join(_cell(r[s]) for s in sides) for r in rows]
        sums = [sum((r[s] or {}).get("cpu_s", 0.0) for r in rows) for s in sides]
        lines.append(f"{'   (these ops)':<52} " + " | ".join(f"{v:8.4f}{'':>22}" for v in sums))
    lines.append("-- totals (every op of the profile, not only the rows above)")
    for s in sides:
        t = table["totals"][s]
        lines.append(f"{s}: unit {t['unit_cpu_s']:.4f} CPU-s; products {t['gemm']['cpu_s']:.4f} s, "
                     f"{t['gemm']['gflop']:.3f} GFLOP, {t['gemm']['gflops_per_s']} GF/s; attention "
                     f"{t['attention']['cpu_s']:.4f} s, {t['attention']['gflop']:.3f} GFLOP, "
                     f"{t['attention']['gflops_per_s']} GF/s; the rest {t['rest_cpu_s']:.4f} s")
    floor = result.get("floor")
    if floor:
        lines.append(f"floor: the reference's {floor['gflop']} GFLOP at {floor['peak_gflops_per_s']} GF/s (the "
                     f"fastest rate measured: {floor['rates_gflops_per_s']}) = {floor['floor_s']} s, "
                     f"{floor['floor_over_reference']} of the reference's median unit")
    lines.append(f"ratio (median of the timed pairs): {result['ratio_median']} {result['ratios']}; CPU-s medians "
                 f"{result['cpu_seconds_median']}; peak RSS MiB {result.get('rss_peak_mib')}; load "
                 f"{result.get('load_average_1min')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result", type=Path, help="a bench_radseg.py --profile JSON")
    print(text(json.loads(ap.parse_args(argv).result.read_text())))


if __name__ == "__main__":
    main()
