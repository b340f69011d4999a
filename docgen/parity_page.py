"""Write docs/parity.md: every parity runner (peers' own code run from a clone against vpltool), its command, the
clones and commits, and its figures, all read from the JSON files in parity/results/.

    python docgen/parity_page.py [--results parity/results] [--out docs/parity.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

INTRO = """# Parity with the peers' own code

Each runner in `parity/` runs a peer's public code from a clone kept outside this repository, in its own process,
on seeded random weights and the 12 parity photos (scikit-image's bundled photos at VOC sizes,
`bench/bench_cam.py`'s `PHOTOS`), in fp32 on the CPU, and compares the tensors with what vpltool's public
functions give on the same inputs. Only imports the arithmetic never reaches are stubbed; each runner's module
docstring lists them. `make parity DENSE_REFS=... OVSS_REFS=... PGSEG_REF=... WECLIP_REF=...` re-runs
them. Every figure below is read from
`parity/results/*.json` by `docgen/parity_page.py`; a piece that was not compared says so and is never counted as
met.
"""


def num(v) -> str:
    if v is None:
        return "not compared"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"
    return str(v)


def table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(num(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]


def dense_section(d: dict) -> list[str]:
    clones = d["reference"].get("clones", {}) if isinstance(d["reference"], dict) else {}
    out = ["## Training-free dense CLIP methods (`--dense`)", "",
           "`python parity/dense_parity.py --ref DIR` (`parity/dense_ref_runner.py` runs each clone). Clones: " +
           ", ".join(f"{k} `{v.get('commit', '?')[:7]}`" for k, v in clones.items()) + ".", "",
           f"Bar: {d['bar']}.", ""]
    rows = [[m, v["max_abs_diff"], v["labels_equal_min"], "met" if v["bar_met"] else "NOT met"]
            for m, v in d["methods"].items()]
    return out + table(["method", "max abs diff of the logits", "labels equal (min over photos)", "bar"], rows) + [""]


def weclip_section(d: dict) -> list[str]:
    ref = d["reference"]
    out = ["## WeCLIP and WeCLIP+ (`train-decoder --recipe weclip` / `weclip+`)", "",
           f"`python parity/weclip_parity.py --ref DIR` (`parity/weclip_ref_runner.py` runs the clone's "
           f"`WeCLIP/` code). Clone: {ref['repository']} `{(ref.get('commit') or '?')[:7]}`; vpltool "
           f"`{(d.get('vpltool_commit') or '?')[:7]}`; {d['crops']} training crops, {d['steps']} optimiser steps, "
           f"the test script on {d.get('test_photos', d['photos'])} photos; {d['machine'].get('cpu', '')} CPU, "
           f"{d['threads']} thread(s).", ""]
    weights = d.get("weights")
    if isinstance(weights, dict):  # sharpened attention (sharpen_attention); the seed-0 init's figures beside
        out += [f"Weights: {weights['clip']}. Why: {weights['why']}."]
        out += ["Probe (vpltool's side alone, gain x spread: crop scores fp32 vs float64): " +
                ", ".join(f"{p['qk_gain']:g} x {p['qk_spread']:g}: {num(p['crop_scores_fp32_vs_fp64'])}"
                          for p in weights.get("probe") or [])] if weights.get("probe") else []
        batch = weights.get("plus_batch")
        if batch:  # WeCLIP+'s fixed batch, chosen by probe_batches
            out += ["", f"WeCLIP+'s fixed batch: `parity/weclip_ref_runner.py --batch-seed {batch['batch_seed']}`. "
                    f"Why: {batch['why']}.",
                    "Probe (vpltool's side alone, per batch seed: the smallest per-pixel top-2 margin over its own "
                    "fp32 rounding; pixels under 10 and 100 times; labels fp32 vs float64 equal): " +
                    ", ".join(f"{p['batch_seed']}: {num(p['ratio_min'])} ({p['pixels_ratio_under_10']}, "
                              f"{p['pixels_ratio_under_100']}; {num(p['labels_equal_fp32_vs_fp64'])})"
                              for p in batch.get("probe") or [])]
        out += [""]
    tied = d.get("weclip_plus_tied")
    for recipe, body in d["recipes"].items():
        out += [f"### `{recipe}`", ""]
        plus = ref.get(recipe) if isinstance(ref.get(recipe), dict) else None  # a recipe run with its own settings
        meta = (plus or {}).get("runner_meta") or {}
        if plus and meta:
            dino = plus.get("dino", {})
            out += [f"The clone's `{plus.get('tree', recipe)}/` code; its DINO: {dino.get('repository', '?')} "
                    f"`{(dino.get('commit') or '?')[:7]}` `{dino.get('model', '?')}` through a local `torch.hub` "
                    f"({dino.get('weights', '')}); {meta.get('crops')} training crops, {meta.get('steps')} optimiser "
                    f"steps, the test script on {d.get('test_photos_plus', meta.get('images'))} photos.", ""]
        rows = [[name, f["kind"] + f" {f['bar']:g}", f["value"],
                 ("met" if f["met"] else "NOT met") if f["compared"] else "not compared"]
                for name, f in body["figures"].items()]
        header = ["figure", "bar", "value", ""]
        earlier = ((d.get("seed0_init") or {}).get("recipes") or {}).get(recipe)
        if earlier:  # the same figures on the seed-0 init's near-uniform attention (the first runs)
            header += ["on the seed-0 init", ""]
            for row in rows:
                f = earlier["figures"].get(row[0], {})
                row += [f.get("value"), ("met" if f.get("met") else "NOT met") if f.get("compared") else
                        "not compared"]
        if recipe == "weclip+" and tied:  # the run before the batch was chosen (batch seed 0)
            header += [f"tied run ({tied.get('crops')} crops)", ""]
            for row in rows:
                f = tied["recipe"]["figures"].get(row[0], {})
                row += [f.get("value"), ("met" if f.get("met") else "NOT met") if f.get("compared") else
                        "not compared"]
        out += table(header, rows) + [""]
        if recipe == "weclip+" and tied:
            out += [f"The tied run: {tied['label']}.", ""]
        notes = [f"- `{name}`: {f['note']}" for name, f in body["figures"].items() if f.get("note")]
        errors = [f"- {part}: {msg}" for part, msg in body.get("errors", {}).items()]
        out += (["Notes:", ""] + notes + [""] if notes else []) + \
            (["Not compared:", ""] + errors + [""] if errors else [])
    out += [f"- {line}" for line in d.get("findings", [])] + ([""] if d.get("findings") else [])
    earlier = (d.get("seed0_init") or {}).get("findings")
    if earlier:
        out += ["On the seed-0 init (the first runs):", ""] + [f"- {line}" for line in earlier] + [""]
    return out


def ovss_section(d: dict) -> list[str]:
    """parity/ovss_parity.py: the newer training-free methods, in dense_parity.py's layout."""
    out = dense_section(d)
    return ["## Newer training-free methods (`--dense sc-clip`, `proxyclip`)", "",
            "`python parity/ovss_parity.py --ref DIR` (`parity/dense_ref_runner.py` runs each clone)."] + out[2:]


def pgseg_section(d: dict) -> list[str]:
    """parity/pgseg_parity.py: PGSeg's (and GroupViT's) own code against the pgseg family."""
    out = ["## PGSeg and GroupViT (the `pgseg` family, `train-pgseg`, `segment --pgseg`)", "",
           f"`python parity/pgseg_parity.py --ref DIR --groupvit DIR --slide` (`parity/pgseg_ref_runner.py` runs "
           f"the clone). Reference: {d['reference']}; {d['config']}, {d['images']} photos; {d['gumbel']}.", "",
           f"Bar: max abs diff <= {d['bars']['max_abs_diff']:g}, labels equal >= {d['bars']['labels_equal']:.1%}.",
           ""]
    rows = [[f"encoder: {k}", v] for k, v in d["eval"].items()]
    rows += [[f"training: {k}", v] for k, v in d["train"].items() if isinstance(v, (int, float, bool))]
    rows += [[f"zero-shot: {k}", v] for k, v in d["zero_shot"].items() if isinstance(v, (int, float))]
    rows += [[f"zero-shot, sliding window: {k}", v] for k, v in d["zero_shot_slide"].items()
             if k in ("logits", "labels_equal")]
    gv = d.get("groupvit") or {}
    rows += [[f"GroupViT ({gv.get('reference', '?')}): {k}", v] for part in ("eval", "train")
             for k, v in (gv.get(part) or {}).items() if isinstance(v, (int, float, bool)) and k != "loss_value"]
    met = all(d["bar_met"].values())
    return out + table(["figure", "value"], rows) + ["", f"Every bar met: {num(met)}.", ""]


def benchmarks_section(d: dict) -> list[str]:
    """parity/benchmarks_parity.py: the eight benchmarks' class lists, files and conversions against the clones."""
    out = ["## The eight benchmarks (class files, label maps, conversions)", "",
           "`python parity/benchmarks_parity.py --ref DIR` (`parity/benchmarks_ref_runner.py` reads each clone's own "
           f"definitions). {d['compared']} values compared, {len(d['mismatches'])} mismatches.", ""]
    rows = [[name, f"`{r.get('commit', '?')[:7]}`", r.get("compared"), r.get("mismatches")]
            for name, r in d["refs"].items()]
    return out + table(["reference", "commit", "values compared", "mismatches"], rows) + [""]


def page_section(d: dict) -> list[str]:
    """A runner's JSON that describes its own section (a new method's runner needs no code here): its ``page``
    block ``{"title", "command", "bar", "rows": [[figure, value], ...]}`` and its ``bar_met``."""
    p = d["page"]
    out = [f"## {p['title']}", "", p["command"], "", f"Bar: {p['bar']}.", ""]
    met = d.get("bar_met")
    if met is None:  # a measurement reported, with no bar
        return out + table(["figure", "value"], p["rows"]) + [""]
    met = all(met.values()) if isinstance(met, dict) else bool(met)  # one bar, or {bar: met}
    return out + table(["figure", "value"], p["rows"]) + ["", f"Every bar met: {num(met)}.", ""]


def runner_page(stem: str, d: dict) -> dict | None:
    """The ``page`` block of a JSON written before its runner wrote one: ``page(d)`` of the runner that wrote it
    (``parity/<stem>.py``), when it defines one (so a method's runner, not this file, says how its figures read)."""
    import importlib.util

    path = ROOT / "parity" / f"{stem}.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"_parity_{stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.page(d) if callable(getattr(module, "page", None)) else None


def render(results: Path) -> str:
    lines = [INTRO]
    known = (("dense_parity.json", dense_section), ("ovss_parity.json", ovss_section),
             ("pgseg_parity.json", pgseg_section), ("weclip_parity.json", weclip_section),
             ("benchmarks_parity.json", benchmarks_section))
    for name, section in known:
        path = results / name
        if path.is_file():
            lines += section(json.loads(path.read_text()))
    for path in sorted(results.glob("*.json")):  # any other runner: its JSON's own section, or its runner's
        if path.name not in dict(known):
            d = json.loads(path.read_text())
            if isinstance(d, dict) and not isinstance(d.get("page"), dict):
                d = {**d, "page": runner_page(path.stem, d)}
            if isinstance(d, dict) and isinstance(d.get("page"), dict):
                lines += page_section(d)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=ROOT / "parity" / "results")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "parity.md")
    args = ap.parse_args(argv)
    args.out.write_text(render(args.results))


if __name__ == "__main__":
    main()
