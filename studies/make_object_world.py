"""An object-centred demo world for pre-training a toy DINO: one shape per scene, 56 to 88 px across in a 96-px scene
(the default world's are 16 to 48, one to three a scene, 8 % of the pixels), other draws as `make-world`'s.

DINO and DINOv2 are pre-trained on object-centred photos (ImageNet; LVD-142M, curated by retrieval around such
datasets), then used on scenes. This world is the demo's stand-in for that, to test whether a toy DINO pre-trained on
it has a class token that attends to the shapes (studies/diagnose_talk2dino_demo.py) and what Talk2DINO then reaches
(studies/ceiling_talk2dino_attention.py; docs/talk2dino.md):

    python studies/make_object_world.py runs/t2d/objects
    vpltool train-toy-dino runs/t2d/dino_objects64/model.safetensors --data runs/t2d/objects --epochs 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vpltool.demo.make_world import write_dataset  # noqa: E402
from vpltool.demo.scenes import SceneConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=500)
    ap.add_argument("--seed", type=int, default=11, help="not the default world's 0: other scenes")
    ap.add_argument("--diameters", default="56,88", help="a shape's circumscribed diameter, px (min,max)")
    args = ap.parse_args()
    low, high = (float(v) for v in args.diameters.split(","))
    write_dataset(args.out, n_train=args.train, n_val=10, seed=args.seed,
                  cfg=SceneConfig(min_objects=1, max_objects=1, min_diameter=low, max_diameter=high))


if __name__ == "__main__":
    main()
