"""Property table of toy CLIPs on the demo world: what VPL relies on, measured on train and val.

    python studies/toy_properties.py NAME=TOY_DIR [NAME=TOY_DIR ...] [--runs DIR] [--out FILE.md]

For each toy CLIP (an open_clip ``local-dir`` folder written by ``vpltool train-toy-clip``) it runs the demo
pipeline exactly as `make demo` does (``make report RUN=RUNS/NAME MODEL=local-dir:TOY_DIR``: 500 train + 200 val
scenes, text prototypes, CAMs, W learned on train at tau_I 0.03, CRF, decoder, held-out scoring), skipping a run
whose ``metrics.json`` is already there, then ``vpltool diagnose`` on the train features too. Per split it reports:

* ``label-set acc``: the trainer's held-out top-1 retrieval of an image's label set (its ``vpltool.json``);
* ``cos(img, own text)``: mean cosine between an image embedding and its classes' text rows (diagnose);
* ``dense text``: dense text-to-patch matching, every pixel labelled by its nearest text row (diagnose's pixel
  classifier for the text prototypes; the argmax does not depend on the temperature);
* for text prototypes and vision prototypes: ``pixel`` (the map phase 1 fits, ``softmax(x.W/tau)``), ``out-GradCAM``
  (GradCAM at the last block's output tokens) and ``GradCAM`` (at the last block's input, the paper's layer, raw:
  no CAA), each from diagnose;
* the pipeline's own figures: text CAM, vision CAM, CRF masks (train and val) and the decoder (val).

mIoU in %, next to chance on the same split. Nothing here is chosen on val: the W of every row is learned on train.
The JSON of every toy goes to stdout; the markdown table to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent
DEFAULT_RUNS = Path("runs/toys")
STAGES = (("CAM, text", "text CAM"), ("CAM, vision", "vision CAM"), ("CRF", "CRF masks"), ("decoder", "decoder"))


def run_demo(toy: Path, run: Path) -> None:
    """`make report` on one toy (no-op when its metrics.json is up to date)."""
    toy = toy.resolve()
    subprocess.run(["make", "-C", str(ROOT), "report", f"RUN={run.resolve()}", f"VENV={VENV}", "DEVICE=cpu",
                    f"MODEL=local-dir:{toy}", f"MODEL_DEP={toy / 'open_clip_model.safetensors'}"], check=True,
                   stdout=subprocess.DEVNULL)


def diagnose(run: Path, split: str) -> dict:
    """`vpltool diagnose` of the run's text and vision prototypes on one split's features (cached as JSON)."""
    out = run / "metrics" / f"diagnose_{split}.json"
    if not out.is_file():
        features = run / ("features" if split == "train" else "features_val")
        protos = ["-p", str(run / "vision_prototypes.safetensors"), "-t", str(run / "text_prototypes.safetensors")]
        subprocess.run([str(VENV / "bin" / "vpltool"), "diagnose", str(features), *protos, "--json", str(out),
                        "--device", "cpu"], check=True, stdout=subprocess.DEVNULL)
    return {row["source"]: row for row in json.loads(out.read_text())["rows"]}


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 1)


def logit_scale(toy: Path) -> float:
    """The toy's inverse temperature exp(logit_scale), read from its weights as shipped (fp16)."""
    from safetensors import safe_open

    with safe_open(str(toy / "open_clip_model.safetensors"), "np") as f:
        return round(float(np.exp(f.get_tensor("logit_scale").astype(np.float64))), 2)


def properties(name: str, toy: Path, run: Path) -> dict:
    """Every figure of one toy, per split (see the module docstring)."""
    training = json.loads((toy / "vpltool.json").read_text()).get("training", {})
    metrics = json.loads((run / "metrics.json").read_text())
    entry = {"name": name, "toy": str(toy), "run": str(run),
             "recipe": {k: training.get(k) for k in ("steps", "batch_size", "lr", "crop_prob", "seed",
                                                      "logit_scale_init", "captions", "layers", "pool", "loss")},
             "train_seconds": training.get("seconds"), "logit_scale": logit_scale(toy),
             "label_set_acc": training.get("label_set_accuracy")}
    for split in ("train", "val"):
        diag = diagnose(run, split)
        text, vision = diag["text"], diag["vision"]
        row = {"cos_own": round(text["image_to_class_cosine"], 3), "dense_text": _pct(text["pixel"])}
        for source, d in (("text", text), ("vision", vision)):
            row[f"{source}_pixel"] = _pct(d["pixel"])
            row[f"{source}_outgrad"] = _pct(d["gradcam_output"])
            row[f"{source}_gradcam"] = _pct(d["gradcam_input"])
        for prefix, key in STAGES:
            stage = next(s for s in metrics["stages"] if s["stage"].startswith(prefix))
            row[key] = _pct(stage[split]["miou"]) if stage.get(split) else None
        row["chance"] = {k: _pct(v) for k, v in metrics["chance"][split].items() if k != "images"}
        entry[split] = row
    return entry


COLUMNS = (("cos_own", "cos(img, own text)"), ("dense_text", "dense text"), ("text_pixel", "text pixel"),
           ("text_outgrad", "text out-GradCAM"), ("text_gradcam", "text GradCAM"), ("vision_pixel", "vision pixel"),
           ("vision_outgrad", "vision out-GradCAM"), ("vision_gradcam", "vision GradCAM"),
           ("text CAM", "**text CAM**"), ("vision CAM", "**vision CAM**"), ("CRF masks", "CRF masks"),
           ("decoder", "decoder"))


def render(entries: list[dict]) -> str:
    """The markdown table: one line per toy and split, then the recipes."""
    head = ["toy", "split", "label-set acc", *[c[1] for c in COLUMNS], "vision − text CAM", "chance (random / all bg)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        for split in ("train", "val"):
            s = e[split]
            cells = [e["name"], split, f"{e['label_set_acc']:g}" if e.get("label_set_acc") is not None else ""]
            cells += ["" if s.get(k) is None else f"{s[k]:g}" for k, _ in COLUMNS]
            cells.append(f"{s['vision CAM'] - s['text CAM']:+.1f}")
            cells.append(f"{s['chance']['random CAMs']:g} / {s['chance']['all background']:g}")
            lines.append("| " + " | ".join(cells) + " |")
    notes = ["", "mIoU %. GradCAM columns are raw (no CAA) from `vpltool diagnose`; the CAM, CRF and decoder columns "
             "are `make demo`'s stages (the demo runs CAMs with `--refine none`). W is learned on train in every row. "
             "Label-set accuracy is the trainer's, on 500 held-out scenes.", "",
             "Recipes (`vpltool train-toy-clip`):", ""]
    for e in entries:
        recipe = ", ".join(f"{k} {v}" for k, v in e["recipe"].items() if v is not None)
        seconds = f"; trained in {e['train_seconds']:.0f} s" if e.get("train_seconds") else ""
        notes.append(f"* `{e['name']}`: {recipe}; logit scale of the weights {e['logit_scale']}{seconds}")
    return "\n".join(lines + notes) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("toys", nargs="+", metavar="NAME=TOY_DIR", help="a name and a toy CLIP folder")
    ap.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help="parent of the demo runs (one per toy)")
    ap.add_argument("--out", type=Path, help="write the markdown table here")
    args = ap.parse_args()
    os.environ.pop("VPLTOOL_MODEL_CONFIGS", None)
    entries = []
    for spec in args.toys:
        name, _, folder = spec.partition("=")
        if not folder or not (Path(folder) / "vpltool.json").is_file():
            ap.error(f"{spec}: give NAME=TOY_DIR, a folder written by `vpltool train-toy-clip`")
        run = args.runs / name
        if not (run / "metrics.json").is_file():
            run_demo(Path(folder), run)
        entries.append(properties(name, Path(folder), run))
        print(json.dumps(entries[-1]))
    table = render(entries)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    print(table, file=sys.stderr)


if __name__ == "__main__":
    main()
