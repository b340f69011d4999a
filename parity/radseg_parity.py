"""``--dense radseg`` against RADSeg's OWN code (RADSeg-OVSS/RADSeg, NVlabs/RADIO's hub code); prints ONE JSON object.

    python parity/radseg_parity.py --ref RADSeg --radio-ref RADIO [--work DIR] [--images 12]

Set-up (made once in ``--work``, :mod:`radseg_files`):

* a seeded random C-RADIOv3-B (timm's ``naflexvit_base_patch16_radio_v3``: 12 blocks of 768, a class token and 7
  registers; its 128x128 position table redrawn N(0, 1)) written as NVlabs/RADIO's hub checkpoint, with a random
  ``siglip2`` summary head (RADIO's ``MLP2``, 768 -> 1536 -> 1536, one inner block), a ``sam`` adaptor (RADSeg
  loads it) and a feature normaliser near the identity; RADIO's hub code builds ``vit_base_patch16_v2_224`` with
  CPE from it, vpltool the timm model from the same file;
* a Hugging Face folder of a random SigLIP model whose text tower has SigLIP 2 g/16-384's shape (vocabulary 256000,
  width 1152, 16 heads, MLP 4304, projection 1536) with ``--text-layers`` blocks (its own 27 cost ~25 CPU-minutes
  a side for VOC20's 20 classes x 80 templates), and a stand-in word-level tokenizer (Gemma's vocabulary cannot be
  fetched here);
* ``--images`` of the parity photos (scikit-image's, ``bench_cam.make_voc``).

The clones run in their own process (``radseg_ref_runner.py``: its mid-resolution VOC20 config, short side 336,
windows 336/112, its own class file). vpltool gets the same normalised input tensors and runs `segment`'s path:
``resolve_method``, its own model (the method's ``backbone`` hook), the query rows of the same class names and
80 templates (:func:`~vpltool.models.dense.segmentor.query_rows`), its ``dense_logits`` and ``probabilities``
hooks. Compared per photo: the windows' features before the global aggregation, the query probabilities at the
photo's size (``seg_logits``) and the labels, each also with the prompt denoising off (the reference's
``predict`` again at threshold 0: random weights may leave no prompt at 0.5). Bar: max |Δ| <= 1e-4 (fp32, CPU)
and >= 99.9 % equal labels. The set-up, the clones' process and the run are ``parity_setup``'s (shared with
CorrCLIP's, OV-Stitcher's and TextRegion's runners).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import parity_setup as ps

BAR, LABELS_BAR = ps.BAR, ps.LABELS_BAR
commit_of, file_digest, max_abs = ps.commit_of, ps.file_digest, ps.max_abs
RADIO = "naflexvit_base_patch16_radio_v3"
CONFIG = "configs/mid_res_configs/cfg_voc20.py"


def setup(work: Path, images: int, text_layers: int, clone: Path) -> dict:
    import radseg_files as rf

    work.mkdir(parents=True, exist_ok=True)
    classes = (clone / "evaluation/2d/configs/cls_voc20.txt").read_text().split("\n")
    ckpt, text = work / "c-radio_v3-b.pth.tar", work / f"siglip2_text_{text_layers}"
    if not ckpt.is_file():
        rf.write_radio_checkpoint(ckpt)
    if not (text / "model.safetensors").is_file():
        rf.write_text_folder(text, {**rf.SIGLIP2_G_TEXT, "num_hidden_layers": text_layers},
                             rf.prompt_words(classes))
    return {"ckpt": ckpt, "text": text, "photos": ps.parity_photos(work, images), "classes": classes}


def run_reference(args, s: dict, out: Path) -> bool:
    """The clones' run (``radseg_ref_runner.py``, its own process) into ``out``; reused when its stamp (commits,
    files, sizes) is the same. Returns whether it was reused."""
    stamp = {"commit": commit_of(args.ref), "radio_commit": commit_of(args.radio_ref), "ckpt": file_digest(s["ckpt"]),
             "text": file_digest(s["text"]), "photos": [file_digest(p) for p in s["photos"]],
             "short_side": args.short_side, "config": CONFIG,
             "runner": file_digest(Path(__file__).parent / "radseg_ref_runner.py")}
    return ps.run_reference("radseg_ref_runner.py", [
        "--clone", str(args.ref), "--radio-clone", str(args.radio_ref), "--checkpoint", str(s["ckpt"]),
        "--text-folder", str(s["text"]), "--config", CONFIG, "--short-side", str(args.short_side),
        *map(str, s["photos"])], stamp, out, args.threads, env={"HF_HUB_OFFLINE": "1"})


def radseg_method(args, s: dict):
    """``--dense radseg`` resolved as `segment` resolves it, with the parity files and VOC20's mid-resolution
    windows (336/112)."""
    from vpltool.config import SegmentConfig
    from vpltool.models.dense.method import resolve_method

    cfg = SegmentConfig.of("radseg", short_side=args.short_side, slide_stride=112, proxy_weights=str(s["ckpt"]),
                           language_model=str(s["text"]))
    return resolve_method(cfg)


def compare(args, s: dict, ref: Path) -> dict:
    import torch

    from vpltool.config.presets import IMAGENET_TEMPLATES
    from vpltool.models.dense.radseg import denoised_labels, query_probabilities, scga, window_features
    from vpltool.models.dense.segmentor import query_rows, segment_logits

    torch.set_num_threads(args.threads)
    meta = json.loads((ref / "meta.json").read_text())
    method = radseg_method(args, s)
    settings = method.settings
    t0 = time.process_time()
    bb = method.load(None, "cpu")
    with torch.no_grad():
        text, idx = query_rows(bb, [[c] for c in meta["prompts"]], list(IMAGENET_TEMPLATES), [])
    text_seconds = round(time.process_time() - t0, 1)
    ref_text = torch.load(ref / "text.pt")["text_embeds"]
    ref_text = ref_text / ref_text.norm(dim=-1, keepdim=True)
    n_classes = len(meta["prompts"]) + 1
    rows, worst_feat, worst_probs, equal, total = [], 0.0, 0.0, 0, 0
    for i, shape in enumerate(meta["photos"]):
        r = torch.load(ref / f"photo_{i:03d}.pt")
        x, ori = r["input"], tuple(shape["ori_shape"])
        start = time.process_time()
        with torch.no_grad():
            probs = segment_logits(bb, x, text, settings, [ori])[0]  # [Q, H0, W0] before the denoising
            _, labels = bb.hooks.probabilities(bb, probs, idx, n_classes, settings)
            seconds = round(time.process_time() - start, 1)
            feat = window_features(bb, x, settings.slide_crop, settings.slide_stride)
            c, h, w = feat.shape
            grid = query_probabilities(bb, scga(feat.reshape(c, -1).T, 10.0).T.reshape(c, h, w), text,
                                       settings.logit_scale)
            kept = probs * (probs.flatten(1).amax(1) >= 0.5)[:, None, None]  # the denoised query probabilities
            _, plain = denoised_labels(probs, idx, n_classes, 0.0, settings.prob_threshold)
        # the reference's prompts are 0-based; vpltool's class 0 is the background (no query here)
        same, same_plain = labels == (r["pred"][0] + 1), plain == (r["pred_plain"][0] + 1)
        row = {"file": shape["file"], "ori_shape": list(ori), "input_shape": list(x.shape[-2:]),
               "cpu_seconds": seconds, "reference_seconds": shape["seconds"],
               "features": max_abs(feat, r["feat"][0]), "grid_probs": max_abs(grid, r["grid_probs"][0]),
               "query_probs": max(max_abs(kept, r["probs"]), max_abs(probs, r["probs_plain"])),
               "labels_equal": float(same.float().mean()), "labels_equal_plain": float(same_plain.float().mean()),
               "reference_classes": sorted(int(c) for c in torch.unique(r["pred"])),
               "reference_classes_plain": sorted(int(c) for c in torch.unique(r["pred_plain"])),
               "reference_queries_kept": int((r["probs"].flatten(1).amax(1) > 0).sum())}
        worst_feat = max(worst_feat, row["features"])
        worst_probs = max(worst_probs, row["query_probs"], row["grid_probs"])
        equal = equal + int(same.sum()) + int(same_plain.sum())
        total = total + same.numel() + same_plain.numel()
        rows.append(row)
    share = equal / max(total, 1)
    worst = max(worst_probs, max_abs(text, ref_text))
    return {"text_rows": max_abs(text, ref_text), "text_cpu_seconds": text_seconds, "features": worst_feat,
            "query_probs": worst_probs, "labels_equal": share, "photos": rows,
            "settings": {"vpltool": {"logit_scale": settings.logit_scale, "slide_crop": settings.slide_crop,
                                     "slide_stride": settings.slide_stride, "short_side": settings.short_side},
                         "reference": {**meta["effective"], "short_side": min(meta["resize_scale"])}},
            "bar_met": bool(worst <= BAR and share >= LABELS_BAR), "reference_seconds": meta["seconds"]}


def page(r: dict) -> dict:
    """The section docs/parity.md shows for this run (``docgen/parity_page.py`` reads it)."""
    run = r["run"]
    return {"title": "RADSeg (`--dense radseg`)",
            "command": f"`python parity/radseg_parity.py --ref RADSeg --radio-ref RADIO` "
                       f"(`parity/radseg_ref_runner.py` runs the clones). Clones: {r['reference']['repo']} "
                       f"`{(r['reference']['commit'] or '?')[:7]}`, NVlabs/RADIO "
                       f"`{(r['reference']['radio_commit'] or '?')[:7]}`; a random C-RADIOv3-B (its full 12 blocks "
                       f"of 768) as RADIO's hub checkpoint, a random SigLIP 2 g/16 text tower of "
                       f"{r['text_layers']} blocks (its width, heads and vocabulary) with a stand-in tokenizer; "
                       f"{r['images']} photos at short side {run['short_side']}, windows 336/112 "
                       f"({run['config']}), its own VOC20 class file.",
            "bar": f"max abs diff <= {r['bar']['max_abs']:g}, labels equal >= {r['bar']['labels_equal']:.1%}",
            "rows": [["query probabilities (patch grid; photo's size, denoised and not), max abs diff",
                      r["query_probs"]],
                     ["window features before the global aggregation, max abs diff", r["features"]],
                     ["labels equal (prompt denoising at 0.5, and at 0)", r["labels_equal"]],
                     ["text rows, max abs diff", r["text_rows"]]]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, required=True, help="a clone of RADSeg-OVSS/RADSeg")
    ap.add_argument("--radio-ref", type=Path, required=True, help="a clone of NVlabs/RADIO")
    ap.add_argument("--work", type=Path, default=None, help="keeps the weights, photos and the clones' output")
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--text-layers", type=int, default=2, help="text blocks of the random SigLIP 2 (its own: 27)")
    ap.add_argument("--short-side", type=int, default=336, help="both sides' short side (its mid VOC20 config: 336)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args(argv)

    def result(work: Path) -> dict:
        s = setup(work, args.images, args.text_layers, args.ref)
        reused = run_reference(args, s, work / "ref")
        return {"reference": {"repo": "RADSeg-OVSS/RADSeg", "commit": commit_of(args.ref),
                              "radio": "NVlabs/RADIO", "radio_commit": commit_of(args.radio_ref),
                              "output_reused": reused},
                "run": {"short_side": args.short_side, "config": f"evaluation/2d/{CONFIG}"},
                "model": RADIO, "text_layers": args.text_layers, "images": args.images, "threads": args.threads,
                "bar": {"max_abs": BAR, "labels_equal": LABELS_BAR}, **compare(args, s, work / "ref")}

    ps.run(args, result, page)


if __name__ == "__main__":
    main()
