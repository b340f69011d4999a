"""Every unit against its reference's own code on ONE CPU, from the results the side-by-side benches printed there;
prints ONE JSON object.

    python bench/units_vs_reference.py bench/results/vs_reference_amd_zen_4.json bench/results/radseg_amd_zen_4.json
        bench/results/textregion_amd_zen_4.json bench/results/activesam_amd_zen_4.json ... \\
        > bench/results/units_vs_reference_amd_zen_4.json

It measures nothing: per unit it takes from its bench's JSON the ratio (vpltool's CPU-seconds over the reference's,
the median of alternating pairs or rounds), the floor on that CPU (the reference's GEMM, convolution and attention
FLOPs at the fastest fp32 rate measured there, over the reference's CPU-seconds: the least ratio that arithmetic
allows), the goal (0.8 where the floor is at most 0.8, and for RADSeg whatever its floor; else within 0.1 of the
floor), the outputs the bench compared and each side's peak resident memory. Where a bench measured it, the floor with
torch's own attention kernel stands beside them (its attention at the fastest rate that kernel reached on the unit's
shapes): it does not set the goal. The files must name the same CPU (vendor, family, model, stepping: benchlib's
``cpu_identity``); one that names another, or none, is refused with a one-line error naming it. Units come from
``bench_vs_reference.py`` (one per method), ``bench_radseg.py``, ``bench_textregion.py`` and ``bench_activesam.py``
(``--method activesam`` or ``sam3``, reduced or full size).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import benchlib  # bench/, this script's folder: on the path when it runs, as for the tests that import it

GOAL = 0.8
NEAR_FLOOR = 0.1  # where the floor is above the goal: within this of the floor
SAME_CPU = ("vendor", "family", "model", "stepping")


def identity_of(path: Path, data: dict) -> dict:
    """The result's CPU identity (benchlib.cpu_identity); one line naming the file where it has none."""
    identity = (data.get("machine") or {}).get("cpu_identity") if isinstance(data.get("machine"), dict) else None
    if not isinstance(identity, dict) or identity.get("family") is None:
        raise SystemExit(f"{path}: records no CPU family and model (an older result): run its bench again")
    return identity


# units held to the goal whatever their floor: RADSeg is asked for 0.8 of its reference on every CPU
FIXED_GOAL = ("radseg",)


def goal_of(ratio: float | None, floor: float | None, name: str = "") -> dict:
    """The goal a unit is held to on its CPU: 0.8 where its floor allows it (at most 0.8, or not measured) or where
    the unit is one of :data:`FIXED_GOAL`, else the floor plus 0.1; met or not."""
    target = GOAL if floor is None or floor <= GOAL or name in FIXED_GOAL else round(floor + NEAR_FLOOR, 3)
    return {"goal": target, "goal_met": None if ratio is None else ratio <= target}


def kernel_floor(floor: dict | None) -> float | None:
    """A bench's floor with torch's own attention kernel (``with_torch_attention``: its attention at the fastest rate
    that kernel reached, the rest at the fastest GEMM rate), over the reference's CPU-seconds; None where the bench
    did not measure it. Shown beside the goal, which stays issue 79's floor's."""
    return ((floor or {}).get("with_torch_attention") or {}).get("floor_over_reference")


def memory(pair: dict | None) -> dict | None:
    return None if not pair else {k: pair.get(k) for k in ("vpltool", "reference")}


def unit_rows(path: Path, data: dict) -> dict[str, dict]:
    """The units of one bench result: ``{unit name: {ratio, floor, outputs, rss_peak_mib, ...}}``."""
    kind = data.get("benchmark")
    if kind == "vs-reference":
        rows = {}
        for method, m in data["methods"].items():
            floor = (m.get("floor") or {}).get("floor_over_reference")
            if floor is None and m.get("roofline"):  # an older run: unit (a)'s GEMM roofline alone
                floor = m["roofline"].get("least_ratio_on_this_arithmetic")
            rows[method] = {"unit": m["unit"], "ratio": m["ratio_median"], "ratios": m.get("ratios"),
                            "floor": floor, "floor_with_torch_attention": kernel_floor(m.get("floor")),
                            "cpu_seconds_median": m.get("cpu_seconds_median"),
                            "outputs": m["outputs"], "rss_peak_mib": memory(m.get("rss_peak_mib")),
                            "command": (m.get("run") or {}).get("command") or data.get("command"),
                            "load_average_1min": m.get("load_average_1min")}
        return rows
    if kind in ("radseg-vs-reference", "textregion-vs-reference"):
        floor = (data.get("floor") or {}).get("floor_over_reference")
        name = kind.removesuffix("-vs-reference")
        unit = data.get("unit") or f"{data.get('images')} photos a round"
        return {name: {"unit": unit, "ratio": data["ratio_median"],
                       "ratios": data.get("ratios") or [r.get("ratio") for r in data.get("rounds", [])],
                       "floor": floor, "floor_with_torch_attention": kernel_floor(data.get("floor")),
                       "outputs": data["outputs"], "rss_peak_mib": memory(data.get("rss_peak_mib"))}}
    if kind in ("activesam-vs-reference", "sam3-vs-reference"):
        size = "full" if str(data.get("model", "")).startswith("full-size") else "reduced"
        name = f"{kind.removesuffix('-vs-reference')} ({size})"
        return {name: {"unit": data["unit"], "ratio": data["ratio_median"], "ratios": data.get("ratios"),
                       "floor": (data.get("floor") or {}).get("floor_over_reference_median"),
                       "sides": data.get("sides"), "outputs": data["outputs"],
                       "rss_peak_mib": memory(data.get("unit_rss_peak_mib_max")),
                       "process_rss_peak_mib": memory(data.get("process_rss_peak_mib"))}}
    raise SystemExit(f"{path}: a {kind!r} result, not one of a side-by-side bench (vs-reference, radseg, textregion, "
                     "activesam)")


def fastest_rate(results: list[tuple[Path, dict]]) -> tuple[float, str] | None:
    """The fastest fp32 rate (GFLOP/s) that any of one CPU's side-by-side results measured for its floors (their
    GEMM probes and unit (a)'s roofline), and the file that measured it; None where none did."""
    rates = [((m.get("floor") or {}).get("peak_gflops_per_s"), path.name) for path, data in results
             if data.get("benchmark") == "vs-reference" for m in data.get("methods", {}).values()]
    rates += [((data.get("floor") or {}).get("peak_gflops_per_s"), path.name) for path, data in results
              if data.get("benchmark") == "radseg-vs-reference"]
    rates = [r for r in rates if r[0]]
    return max(rates) if rates else None


def at_fastest(row: dict, m: dict, fastest: tuple[float, str] | None) -> dict:
    """A vs-reference or RADSeg unit's floor at the CPU's fastest rate measured in any run (:func:`fastest_rate`): a
    shared host's probes that ran in a slow stretch lift one run's floor, and with it the goal (the floor is the least
    ratio the arithmetic allows on this CPU, so the lowest such rate's floor is the one that holds). The run's own
    floor kept beside it (``floor_as_run``)."""
    floor = m.get("floor") or {}
    gflop = floor.get("reference_gflop") or floor.get("gflop")  # bench_vs_reference's name, bench_radseg's
    seconds = (m.get("cpu_seconds_median") or {}).get("reference")
    if not (fastest and gflop and seconds) or fastest[0] <= (floor.get("peak_gflops_per_s") or 0):
        return row
    kernel = floor.get("with_torch_attention")
    if kernel:  # its products at that rate too, its attention at the kernel's fastest rate as measured
        attention_peak = max(kernel.get("attention_peak_gflops_per_s") or 0, *kernel["attention_gflops_per_s"].values())
        least = benchlib.attention_floor(gflop, kernel["attention_gflop"], fastest[0], attention_peak)
        row = {**row, "floor_with_torch_attention": round(least / seconds, 3),
               "floor_with_torch_attention_as_run": row["floor_with_torch_attention"]}
    return {**row, "floor": round(gflop / fastest[0] / seconds, 3), "floor_as_run": row["floor"],
            "floor_rate_gflops_per_s": fastest[0], "floor_rate_from": fastest[1]}


def merge(paths: list[Path]) -> dict:
    """One CPU's units from ``paths`` (module docstring), each with its goal and its file; each vs-reference
    unit's floor at the fastest rate any of them measured (:func:`at_fastest`)."""
    units: dict[str, dict] = {}
    first = None
    results = []
    for path in paths:
        try:
            results.append((path, json.loads(path.read_text())))
        except (OSError, ValueError) as e:
            raise SystemExit(f"{path}: not a bench result ({e})") from None
    fastest = fastest_rate(results)
    for path, data in results:
        identity = identity_of(path, data)
        if first is None:
            first = (path, identity, data["machine"])
        elif any(identity.get(k) != first[1].get(k) for k in SAME_CPU):
            raise SystemExit(f"{path}: another CPU than {first[0]}'s (" + ", ".join(
                f"{k} {identity.get(k)} vs {first[1].get(k)}" for k in SAME_CPU
                if identity.get(k) != first[1].get(k)) + "): merge one CPU's results at a time")
        for name, row in unit_rows(path, data).items():
            if data.get("benchmark") == "vs-reference":
                row = at_fastest(row, data["methods"][name], fastest)
            elif data.get("benchmark") == "radseg-vs-reference":
                row = at_fastest(row, data, fastest)
            units[name] = {"command": data.get("command"), "load_average_1min": data.get("load_average_1min"),
                           **{k: v for k, v in row.items() if v is not None},
                           **goal_of(row["ratio"], row["floor"], name), "floor": row["floor"], "file": path.name}
    return {"benchmark": "units-vs-reference", "what": "every unit against its reference's own code on one CPU: "
            "vpltool's CPU-seconds over the reference's, the floor the same arithmetic allows there (a vs-reference "
            "or RADSeg unit's at the fastest rate any of these runs measured, its own run's beside it where that was "
            f"slower), the goal ({GOAL} where the floor allows it, and for {', '.join(FIXED_GOAL)} whatever its "
            f"floor; else the floor + {NEAR_FLOOR}), the outputs compared, peak memory of both sides",
            "machine": first[2], "machine_of": first[0].name, "units": units}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, nargs="+", help="the side-by-side benches' JSON, all from one CPU")
    args = ap.parse_args(argv)
    json.dump(merge(args.results), sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
