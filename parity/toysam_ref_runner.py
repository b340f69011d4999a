"""Run segment-anything's OWN ``Sam`` and ``SamPredictor`` from a clone on the shipped toy SAM's weights: the
reference half of `toysam_parity.py`.

    python toysam_ref_runner.py --clone DIR --weights model.safetensors --photos JPG_DIR --out OUT_DIR [--threads 1]

It imports nothing from vpltool: run it as its own process. The clone (facebookresearch/segment-anything) is put
first on ``sys.path`` and its package is checked to be the one imported; its code is never copied or edited. Its
``build_sam`` fixes ViT-B/L/H's prompt and decoder widths (256, mlp 2048, 1024 px), so the toy's ``Sam`` is built
from the clone's own modules as ``_build_sam`` builds them, with the toy's shapes (below, the numbers of
``SAM_ARCHS["toy"]`` in ``vpltool/models/backbones/sam.py``), and its state dict loaded strictly from the file.

Per photo (PIL, RGB uint8), ``SamPredictor.set_image`` then ``predict(..., return_logits=True)`` for the prompts of
:data:`PROMPTS` (in the photo's pixels): ``photo_NNN.pt`` holds the image, ``features`` (``predictor.features``)
and per prompt the mask logits at the photo's size, the predicted IoUs and the low-resolution logits.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

# the toy's shapes (vpltool/models/backbones/sam.py SAM_ARCHS["toy"]); patch 16, mlp ratio 4, qkv bias, rel pos, as
# _build_sam
TOY = {"embed_dim": 64, "depth": 4, "num_heads": 4, "global_attn_indexes": (1, 3), "img_size": 192,
       "window_size": 6, "out_chans": 64, "mask_in_chans": 8, "decoder_mlp": 256, "decoder_heads": 4,
       "iou_hidden": 64}


def prompts(h: int, w: int) -> dict[str, dict]:
    """The prompts of one photo (``h x w``), in its pixels: SamPredictor's ``predict`` arguments."""
    import numpy as np

    centre = np.array([[w / 2, h / 2]], dtype=np.float32)
    box = np.array([w / 4, h / 4, 3 * w / 4, 3 * h / 4], dtype=np.float32)
    corner = np.array([[w / 8, h / 8]], dtype=np.float32)
    return {
        "point": {"point_coords": centre, "point_labels": np.array([1]), "multimask_output": True},
        "box": {"box": box, "multimask_output": True},
        "point+box": {"point_coords": centre, "point_labels": np.array([1]), "box": box, "multimask_output": False},
        "two points": {"point_coords": np.concatenate([centre, corner]), "point_labels": np.array([1, 0]),
                       "multimask_output": False},
    }


def build(clone_pkg, weights: Path):
    import torch
    from safetensors.torch import load_file

    m = clone_pkg.modeling
    grid = TOY["img_size"] // 16
    sam = m.Sam(
        image_encoder=m.ImageEncoderViT(depth=TOY["depth"], embed_dim=TOY["embed_dim"], img_size=TOY["img_size"],
                                        mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                                        num_heads=TOY["num_heads"], patch_size=16, qkv_bias=True, use_rel_pos=True,
                                        global_attn_indexes=TOY["global_attn_indexes"],
                                        window_size=TOY["window_size"], out_chans=TOY["out_chans"]),
        prompt_encoder=m.PromptEncoder(embed_dim=TOY["out_chans"], image_embedding_size=(grid, grid),
                                       input_image_size=(TOY["img_size"], TOY["img_size"]),
                                       mask_in_chans=TOY["mask_in_chans"]),
        mask_decoder=m.MaskDecoder(num_multimask_outputs=3,
                                   transformer=m.TwoWayTransformer(depth=2, embedding_dim=TOY["out_chans"],
                                                                   mlp_dim=TOY["decoder_mlp"],
                                                                   num_heads=TOY["decoder_heads"]),
                                   transformer_dim=TOY["out_chans"], iou_head_depth=3,
                                   iou_head_hidden_dim=TOY["iou_hidden"]),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    sam.load_state_dict(load_file(str(weights)), strict=True)
    return sam.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clone", type=Path, required=True)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, str(args.clone.resolve()))
    import numpy as np
    import segment_anything
    import torch
    from PIL import Image

    where = Path(segment_anything.__file__).resolve()
    if args.clone.resolve() not in where.parents:
        raise SystemExit(f"segment_anything imported from {where}, not from the clone {args.clone}")
    torch.set_num_threads(args.threads)
    sam = build(segment_anything, args.weights)
    predictor = segment_anything.SamPredictor(sam)
    args.out.mkdir(parents=True, exist_ok=True)
    files = sorted(args.photos.glob("*.jpg"))
    for i, path in enumerate(files):
        image = np.asarray(Image.open(path).convert("RGB"))
        predictor.set_image(image)
        out = {"image": torch.from_numpy(image.copy()), "features": predictor.features.clone(), "prompts": {}}
        for name, kwargs in prompts(*image.shape[:2]).items():
            masks, iou, low = predictor.predict(**kwargs, return_logits=True)
            out["prompts"][name] = {"masks": torch.from_numpy(masks), "iou": torch.from_numpy(iou),
                                    "low": torch.from_numpy(low)}
        torch.save(out, args.out / f"photo_{i:03d}.pt")
    (args.out / "meta.json").write_text(json.dumps({"clone_package": str(where.parent), "photos": len(files),
                                                    "toy": {k: list(v) if isinstance(v, tuple) else v
                                                            for k, v in TOY.items()}}))


if __name__ == "__main__":
    main()
