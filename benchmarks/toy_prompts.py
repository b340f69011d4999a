"""Which demo prompts (Make's TEMPLATES and BACKGROUND) suit a toy CLIP: text-prototype GradCAM mIoU on TRAIN only.

    python benchmarks/toy_prompts.py WORK_DIR TOY_DIR [--images 500]

WORK_DIR is a folder written by benchmarks/toy_properties.py for that toy (it holds ``features_train``). For each
prompt setting below, text prototypes are built with the library (`build_text_prototypes`) and scored with the `cam`
map (softmax-GradCAM at the last block's ln_1, no refinement) on the train split, bg exponent 1 and 2. Prints one
JSON object. Nothing here looks at the val split.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from vpltool import io
from vpltool.backbone import ModelSpec, load_backbone
from vpltool.cam import gradcam
from vpltool.config import TextPrototypesConfig
from vpltool.data import open_dataset
from vpltool.text_prototypes import build_text_prototypes

sys.path.insert(0, str(Path(__file__).parent))
from toy_properties import Scorer  # noqa: E402

SETTINGS = {
    "photo (demo default)": ("a photo of a {}.", "grass,sky,wall,water"),
    "4 templates": ("a photo of a {}.\na picture of a {}.\nan image of a {}.\na {}.", "grass,sky,wall,water"),
    "photo + scenery words": ("a photo of a {}.", "grass,sky,wall,water,brick,the grass,the sky,a brick wall,the water"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("toy", type=Path)
    ap.add_argument("--images", type=int, default=500)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    bb = load_backbone(ModelSpec(model=f"local-dir:{args.toy.resolve()}"))
    feats_dir = args.work / "features_train"
    record = io.read_stage_record(feats_dir, "extract")
    classes = record["classes"]
    data = open_dataset(record["inputs"]["dataset"]["root"], "train")
    gts = {it.id: it.gt for it in data.items}
    items = [io.read_features(p, classes=classes) for p in sorted(feats_dir.glob("*.safetensors"))[: args.images]]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (templates, background) in SETTINGS.items():
            spec = templates
            if "\n" in templates:
                spec = str(Path(tmp) / "templates.txt")
                Path(spec).write_text(templates + "\n")
            try:
                protos = build_text_prototypes(bb, classes, TextPrototypesConfig(templates=spec, background=background))
            except Exception as e:  # a word outside the toy's vocabulary
                out[name] = f"skipped: {e}"
                continue
            scorer = Scorer(len(classes))
            for f in items:
                labels = [int(c) for c in f.labels]
                if not labels:
                    continue
                rows = protos.image_rows(labels).float()
                raw, _, _ = gradcam(bb, f.last_block_input, f.grid, rows, len(labels), protos.temperature)
                scorer.add("text_gradcam", io.read_mask(gts[f.file.path.stem]), raw, labels, f.image_size)
            out[name] = {"templates": templates, "background": background, **scorer.result()}
            print(name, out[name], file=sys.stderr, flush=True)
    print(json.dumps({"toy": str(args.toy), "images": len(items), "split": "train", "settings": out}, indent=1))


if __name__ == "__main__":
    main()
