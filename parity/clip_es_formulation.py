"""CLIP-ES's CAM loop rebuilt from vpltool's primitives: `bench_cam.py`'s stand-in when no CLIP-ES clone is given.

    python clip_es_formulation.py DATA MODEL WEIGHTS PROTOTYPES THREADS

It is structured as ``generate_cams_voc12.py:perform`` is, so that its cost has the same shape: per image the
frozen blocks once with every attention map kept (no batching of images), then for each present class one forward
of the last block and one backward (the class first, the other present classes after it, then the background
words), and CAA with the affinity built at the first class; every map is upsampled to the image. It writes nothing.
The real script (``clip_es_runner.py``) is the comparison to quote; this one only keeps the benchmark runnable
without a clone (CI, ``--quick``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from vpltool import io
from vpltool.config import CAM_ATTENTION_BLOCKS, CamConfig
from vpltool.data import open_dataset
from vpltool.models import ModelSpec, load_backbone
from vpltool.ops.kernels import upsample
from vpltool.stages.cam import affinity, refine

ASSETS = Path(__file__).resolve().parents[1] / "tests" / "assets" / "model_configs"


def per_class_cams(bb, image, labels, protos: io.Prototypes, cfg: CamConfig) -> None:
    """One image, CLIP-ES's way: frozen blocks once, then per class a last-block forward + backward + CAA."""
    size = bb.input_size(*image.shape[:2])
    grid = (size[0] // bb.patch_size, size[1] // bb.patch_size)
    with torch.no_grad():  # CLIP-ES keeps every block's attention map
        enc = bb.encode(bb.preprocess(image, size)[None], stop=bb.n_blocks - 1, attention_from=0)
    blocks = cfg.attention_blocks or CAM_ATTENTION_BLOCKS
    prev = torch.stack([a[0, 1:, 1:] for a in enc.attentions[-(blocks - 1):]]).mean(0)
    rows_of, bg = protos.class_rows(), protos.vectors[protos.background_rows()]
    trans = None
    for c in labels:
        order = [c] + [o for o in labels if o != c]
        rows = torch.cat([protos.vectors[rows_of[[o - 1 for o in order]]], bg])
        cam = bb.gradcam(enc.tokens[0], grid, rows, 1, protos.temperature)
        if trans is None:
            trans = affinity((prev * (blocks - 1) + cam.attention[1:, 1:]) / blocks)
        upsample(refine(cam.maps, trans, cfg.box_threshold).maps, image.shape[:2])


def main(argv: list[str]) -> None:
    data, model, weights, prototypes, threads = argv
    torch.set_num_threads(int(threads))
    bb = load_backbone(ModelSpec(model, weights, config_dir=str(ASSETS)), "cpu")
    dataset = open_dataset(Path(data), "train")
    protos = io.read_prototypes(Path(prototypes), classes=dataset.classes)
    for item in dataset.items:
        per_class_cams(bb, io.load_image(item.image), list(item.labels), protos, CamConfig())


if __name__ == "__main__":
    main(sys.argv[1:])
