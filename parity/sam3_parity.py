"""SAM 3 in vpltool (the ``sam3`` family: transformers' ``Sam3Model`` and vpltool's reader of Meta's ``sam3.pt``)
against Meta's own SAM 3 code and ActiveSAM's processor over it (``sam3_ref_runner.py``), on the same seeded random
weights saved as Meta's ``sam3.pt`` and real photos, fp32 on the CPU.

    python parity/sam3_parity.py --ref /path/to/VILA-Lab+ActiveSAM [--images 3] [--full] [--threads 1]

The model: Meta's builder's whole detector (its 256-wide DETR of 6 + 6 layers and 200 queries, geometry encoder,
segmentation head; 1008 px, 14 px patches, windows of 24) with, unless ``--full``, a reduced ViT (width 128, 4
layers, 4 heads, globals 1 and 3) and text tower (width 128, 2 layers, 4 heads) on both sides (Meta's code takes the
dims as arguments of its own classes). Compared per photo: the backbone's FPN levels and position encodings, the text
outputs and token ids, ActiveSAM's 672 px preview (the head skipped: object logits and presence), the raw grounding
of the prompts as one bucket (``pred_logits``, ``presence_logit_dec``, ``pred_boxes``, ``pred_masks``,
``semantic_seg``), the processor's per-prompt states (kept queries, their scores and mask probabilities, the
semantic probabilities), and, on the first photo, the grounding with context-memory tokens appended. Writes
``parity/results/sam3_parity.json`` (``bar_met``: logits and probabilities within 1e-4).

The reference side takes minutes (the JSON's ``reference_seconds``); ``--reference-from DIR`` compares vpltool
against the outputs a run left in ``DIR`` (``WORK/reduced/ref``: ``meta.json``, ``photo_NNN.pt``) instead of running
it again, e.g. to compare two vpltool commits; the weights and photos are the work folder's, so ``DIR`` must come from
the same ``--work`` (or a copy of its ``sam3.pt``, ``sam3.json`` and ``voc``). Where the mask logits miss the bar,
``sam3_head_rounding.py`` (on the same work folder) measures each side's head against a float64 one: whose rounding
the gap is.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
BAR = 1e-4
PROMPTS = ["person", "cat", "cup of coffee"]
REDUCED = {"vit": {"width": 128, "depth": 4, "heads": 4, "global": [1, 3]},
           "text": {"width": 128, "layers": 2, "heads": 4}}
SEED = 0
# the processors' confidence threshold in the comparison: seeded random weights score every query 0.11-0.16 (Meta's
# 0.5 and ActiveSAM's 0.3 keep none), so a threshold among those scores keeps some and their masks are compared
THRESHOLD = 0.125


def config(dims: dict) -> dict:
    """vpltool's configuration of the model ``dims`` names (Meta's builder's where empty)."""
    from vpltool.models.backbones.sam3_weights import meta_config

    cfg = meta_config()
    if dims.get("vit"):
        v = dims["vit"]
        cfg["vision_config"]["backbone_config"].update(
            hidden_size=v["width"], intermediate_size=int(v["width"] * 4.625), num_hidden_layers=v["depth"],
            num_attention_heads=v["heads"], global_attn_indexes=v["global"])
    if dims.get("text"):
        t = dims["text"]
        cfg["text_config"].update(hidden_size=t["width"], intermediate_size=4 * t["width"],
                                  num_hidden_layers=t["layers"], num_attention_heads=t["heads"])
    return cfg


def setup(work: Path, images: int, dims: dict) -> dict:
    import bench_cam
    import torch

    from vpltool.models.backbones.sam3_files import random_state, write_meta

    work.mkdir(parents=True, exist_ok=True)
    ckpt, marker = work / "sam3.pt", work / "sam3.json"
    if not (ckpt.is_file() and marker.is_file() and json.loads(marker.read_text()) == {"dims": dims, "seed": SEED}):
        write_meta(ckpt, config(dims), random_state(config(dims), SEED))
        marker.write_text(json.dumps({"dims": dims, "seed": SEED}))
    gen = torch.Generator().manual_seed(SEED + 1)
    k, m = len(PROMPTS), 2
    mask = torch.zeros(k, m, dtype=torch.bool)
    mask[0, 1] = True  # one padded memory token (True = ignored, ActiveSAM's convention)
    torch.save({"tokens": torch.randn(m, k, 256, generator=gen), "mask": mask}, work / "memory.pt")
    (work / "dims.json").write_text(json.dumps(dims))
    photos = bench_cam.voc_photos(work / "voc", images)
    return {"ckpt": ckpt, "photos": photos, "memory": work / "memory.pt", "dims": work / "dims.json"}


def run_reference(ref: Path, s: dict, out: Path, threads: int) -> tuple[dict, str]:
    cmd = [sys.executable, str(ROOT / "parity" / "sam3_ref_runner.py"), "--clone", str(ref), "--checkpoint",
           str(s["ckpt"]), "--dims", str(s["dims"]), "--prompts", ",".join(PROMPTS), "--memory", str(s["memory"]),
           "--out", str(out), "--threads", str(threads), "--threshold", str(THRESHOLD), *map(str, s["photos"])]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"reference runner failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    (out / "stdout.txt").write_text(done.stdout)  # its missing-keys lines, for a later --reference-from
    return json.loads((out / "meta.json").read_text()), done.stdout


def saved_reference(out: Path, photos: int) -> tuple[dict, str]:
    """The meta and stdout a reference run left in ``out`` (:func:`run_reference`); one line naming the folder and
    the fix where it lacks a photo."""
    missing = [f.name for f in [out / "meta.json", *(out / f"photo_{i:03d}.pt" for i in range(photos))]
               if not f.is_file()]
    if missing:
        raise SystemExit(f"error: --reference-from {out}: no {', '.join(missing)} there; run without "
                         f"--reference-from once (same --work and --images) to make them")
    stdout = out / "stdout.txt"
    return json.loads((out / "meta.json").read_text()), stdout.read_text() if stdout.is_file() else ""


def diff(a, b) -> float:
    import torch

    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return float((a - b).abs().max()) if a.numel() else 0.0


def compare_grounding(g, ref: dict) -> dict:
    """vpltool's :class:`Sam3Grounding` against Meta's ``forward_grounding`` outputs (seq/batch layouts)."""
    out = {"pred_logits": diff(g.pred_logits, ref["pred_logits"][..., 0]),
           "presence_logits": diff(g.presence_logits, ref["presence_logit_dec"].reshape(-1)),
           "pred_boxes": diff(g.pred_boxes, ref["pred_boxes"])}
    if g.pred_masks is not None:
        out["pred_masks"] = diff(g.pred_masks, ref["pred_masks"])
        out["semantic_seg"] = diff(g.semantic_seg, ref["semantic_seg"])
    return out


def compare_states(concepts, states: list[dict]) -> dict:
    """vpltool's :class:`Sam3Concept` list against ActiveSAM's per-prompt states (kept queries, their scores and mask
    probabilities, the semantic probabilities, the presence)."""
    out = {"kept": [int(c.scores.numel()) for c in concepts], "kept_equal": True, "scores": 0.0, "masks": 0.0,
           "semantic": 0.0, "presence": 0.0}
    for c, s in zip(concepts, states):
        if c.scores.numel() != s["object_score"].numel():
            out["kept_equal"] = False
            continue
        out["scores"] = max(out["scores"], diff(c.scores, s["object_score"]))
        out["masks"] = max(out["masks"], diff(c.masks, s["masks_logits"][:, 0]))
        out["semantic"] = max(out["semantic"], diff(c.semantic, s["semantic_mask_logits"][0]))
        out["presence"] = max(out["presence"], diff(c.presence, s["presence_score"]))
    return out


def run_ours(s: dict, ref_out: Path, threads: int) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from vpltool.models import load_model
    from vpltool.models.backbones.sam3 import Sam3Spec

    torch.set_num_threads(threads)
    sam = load_model("sam3", Sam3Spec(str(s["ckpt"])))
    memory = torch.load(s["memory"], weights_only=True)
    photos, seconds = [], []
    for i, photo in enumerate(s["photos"]):
        ref = torch.load(ref_out / f"photo_{i:03d}.pt", weights_only=True)
        image = np.asarray(Image.open(photo).convert("RGB"))
        t = time.time()
        small = sam.encode_image(sam.prepare(image, 672))
        text = sam.encode_text(PROMPTS)
        preview = sam.ground(small, text, masks=False)
        full = sam.encode_image(sam.prepare(image))
        grounding = sam.ground(full, text)
        concepts = sam.concepts(grounding, image.shape[:2], threshold=THRESHOLD)
        seconds.append(time.time() - t)
        rt = ref["text"]
        row = {"photo": photo.name, "size": list(image.shape[:2]),
               "tokens_equal": bool(torch.equal(sam.tokenize(PROMPTS), ref["tokens"])),
               "preview_fpn": max(diff(a, b) for a, b in zip(small.features, ref["preview_fpn"])),
               "preview": compare_grounding(preview, ref["preview"]),
               "fpn": max(diff(a, b) for a, b in zip(full.features, ref["fpn"])),
               "positions": max(diff(a, b) for a, b in zip(full.positions, ref["pos"])),
               "text_features": diff(text.features, rt["language_features"].transpose(0, 1)),
               "text_valid_equal": bool(torch.equal(text.valid, ~rt["language_mask"])),
               "text_embeds": diff(text.embeds, rt["language_embeds"].transpose(0, 1)),
               "grounding": compare_grounding(grounding, ref["grounding"]),
               "states": compare_states(concepts, ref["states"])}
        if "memory_grounding" in ref:
            with_memory = text.with_tokens(memory["tokens"].transpose(0, 1), ~memory["mask"])
            g = sam.ground(full, with_memory)
            row["memory_grounding"] = compare_grounding(g, ref["memory_grounding"])
            row["memory_states"] = compare_states(sam.concepts(g, image.shape[:2], THRESHOLD), ref["memory_states"])
        photos.append(row)
        print(json.dumps(row), flush=True)
    return {"photos": photos, "seconds": seconds}


def summary(photos: list[dict]) -> dict:
    """The worst of each figure over the photos."""
    def worst(get):
        values = [v for p in photos for v in [get(p)] if v is not None]
        return max(values) if values else None

    logits = ("pred_logits", "presence_logits", "pred_masks", "semantic_seg")
    return {
        "logits": worst(lambda p: max(max(p[g].get(k, 0.0) for k in logits)
                                      for g in ("preview", "grounding", "memory_grounding") if g in p)),
        "probabilities": worst(lambda p: max(max(p[s][k] for k in ("scores", "masks", "semantic", "presence"))
                                             for s in ("states", "memory_states") if s in p)),
        "boxes": worst(lambda p: max(p[g]["pred_boxes"] for g in ("preview", "grounding", "memory_grounding")
                                     if g in p)),
        "fpn": worst(lambda p: max(p["fpn"], p["preview_fpn"])),
        "positions": worst(lambda p: p["positions"]),
        "text": worst(lambda p: max(p["text_features"], p["text_embeds"])),
        "kept_equal": all(p[s]["kept_equal"] for p in photos for s in ("states", "memory_states") if s in p),
        "tokens_equal": all(p["tokens_equal"] and p["text_valid_equal"] for p in photos),
    }


def cpu_name() -> str:
    """The CPU's name with its generation, family and model (benchlib's, from /proc/cpuinfo), and whether it has
    AMX (the figures are fp32 either way): a generic "Intel(R) Xeon(R) Processor" names no generation by itself."""
    import benchlib

    identity = benchlib.cpu_identity()
    return benchlib.cpu_name(identity) + (" with AMX" if identity["isa_flags"].get("amx_bf16") else " without AMX")


def page(d: dict) -> dict:
    s = d["summary"]
    dims = d["dims"]
    model = ("Meta's builder's whole SAM 3" if not dims else
             f"Meta's builder's detector (256-wide DETR 6 + 6 layers, 200 queries, geometry encoder, segmentation "
             f"head; 1008 px) with a ViT of width {dims['vit']['width']}, {dims['vit']['depth']} layers and a text "
             f"tower of width {dims['text']['width']}, {dims['text']['layers']} layers on both sides")
    flags = f" --full --images {len(d['photos'])}" if not dims else ""
    return {"title": "SAM 3 (the `sam3` family; `--region-masks sam3`)" + (", full size" if not dims else ""),
            "command": f"`python parity/sam3_parity.py --ref ActiveSAM{flags}` (`parity/sam3_ref_runner.py` runs "
                       f"Meta's sam3 code as ActiveSAM `{d['reference']['commit'][:7]}` vendors it, and ActiveSAM's "
                       f"bucketed processor). {model}; seeded random weights saved as Meta's sam3.pt and read by "
                       f"vpltool's own loader; {len(d['photos'])} photos, prompts {', '.join(PROMPTS)} in one bucket, "
                       f"ActiveSAM's 672 px preview (head skipped) and context-memory tokens; the processors' "
                       f"confidence threshold {d['threshold']} (random weights score every query 0.11-0.16); "
                       f"fp32 on one thread of an {d.get('cpu', 'unknown CPU')}.",
            "bar": f"logits and probabilities max abs diff <= {BAR:g}, the same queries kept",
            "rows": [["object, presence, mask and semantic logits (preview, bucket, with memory tokens), max abs diff",
                      s["logits"]],
                     ["kept queries' scores, mask and semantic probabilities, presence, max abs diff",
                      s["probabilities"]],
                     ["boxes (cxcywh in [0, 1]), max abs diff", s["boxes"]],
                     ["FPN features (1008 and 672 px), max abs diff", s["fpn"]],
                     ["position encodings, max abs diff", s["positions"]],
                     ["text features and token embeddings, max abs diff", s["text"]],
                     ["the same queries kept above the threshold", s["kept_equal"]],
                     ["token ids and masks equal", s["tokens_equal"]]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, required=True, help="a clone of VILA-Lab/ActiveSAM (its sam3/ folder)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/vpltool-sam3-parity"))
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="Meta's builder's full-size model (slow on a CPU)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reference-from", type=Path, default=None,
                    help="the folder of an earlier reference run's outputs (WORK/reduced/ref) to compare against, "
                         "the reference not run again")
    ap.add_argument("--out", type=Path, default=None,
                    help="[default: parity/results/sam3_parity.json; with --full sam3_parity_full.json]")
    args = ap.parse_args()
    dims = {} if args.full else REDUCED
    work = args.work / ("full" if args.full else "reduced")
    s = setup(work, args.images, dims)
    t = time.time()
    ref_dir = args.reference_from or work / "ref"
    ref_meta, ref_stdout = (saved_reference(ref_dir, args.images) if args.reference_from else
                            run_reference(args.ref, s, ref_dir, args.threads))
    ref_seconds = None if args.reference_from else time.time() - t
    ours = run_ours(s, ref_dir, args.threads)
    commit = subprocess.run(["git", "-C", str(args.ref), "rev-parse", "HEAD"], capture_output=True, text=True)
    summ = summary(ours["photos"])
    met = {"logits": summ["logits"] <= BAR, "probabilities": summ["probabilities"] <= BAR,
           "kept": summ["kept_equal"], "tokens": summ["tokens_equal"]}
    d = {"reference": {"repo": "VILA-Lab/ActiveSAM (Meta's sam3/ vendored)", "commit": commit.stdout.strip(),
                       "stubbed": ref_meta["stubbed"],
                       "missing_keys_printed": [ln for ln in ref_stdout.splitlines() if "missing" in ln][:3]},
         "dims": dims, "prompts": PROMPTS, "threshold": THRESHOLD, "threads": args.threads, "cpu": cpu_name(),
         "bar": BAR, "summary": summ, "bar_met": met,
         "photos": ours["photos"], "seconds": ours["seconds"], "reference_seconds": ref_meta["seconds"],
         "reference_wall_seconds": ref_seconds, "reference_reused": bool(args.reference_from)}
    d["page"] = page(d)
    args.out = args.out or ROOT / "parity" / "results" / f"sam3_parity{'_full' if args.full else ''}.json"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(d, indent=1) + "\n")
    print(json.dumps({"summary": summ, "bar_met": met}, indent=1))


if __name__ == "__main__":
    main()
