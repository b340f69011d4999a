"""``--dense sam3`` and ``--dense activesam`` against ActiveSAM's OWN code (VILA-Lab/ActiveSAM@41cad43 and its
vendored Meta ``sam3``); prints ONE JSON object.

    python parity/activesam_parity.py --ref ActiveSAM [--work DIR] [--images 3] [--methods sam3,activesam]

Set-up (made once in ``--work``):

* a reduced SAM 3 (both sides build it: SAM 3's code at smaller sizes, :func:`reduced_config`): a 4-block ViT of
  width 128 on 336 px (a 24 x 24 grid, windows of 8, blocks 1 and 3 global: SAM 3's 72 / 24 / 3 in miniature, so
  that the 224-pixel preview is 2 windows a side as SAM 3's 672 is), a 2-layer text tower of width 128, the 256-wide
  DETR at 2 + 2 layers and 200 queries; seeded random weights from the sam3 family (``random_state``, seed 0) written
  in Meta's layout (``write_meta``), which Meta's own loader reads in the clone (``activesam_ref_runner.py``);
* ``--images`` of the parity photos (scikit-image's, ``bench_cam.make_voc``) and a small WordNet in nltk's format
  (``wordnet_fixture.py``), which both sides read through nltk (``NLTK_DATA``).

The clone runs in its own process (``activesam_ref_runner.py``, ``configs/cfg_voc21.py``: its 21 class words) with
``--overrides`` that exercise every part on 21 words: ``pruner_max_active`` 8 (so the preview prunes) and
``bucket_size`` 4 (several buckets), a ``prob_thd`` at which the random model's photos are partly background, and for
the SAM 3 row a ``confidence_threshold`` that keeps some of the random model's instances (:data:`OVERRIDES`).
vpltool runs `segment`'s path for each photo (``resolve_method``, the method's hooks: ``query_text``,
``dense_logits``, ``probabilities``) with the same settings, its own class file (the bundled copy) and the same
weights file through the ``sam3`` family.

Compared per photo: the per-word score maps (``_inference_single_view``'s), the class scores and the labels after
the background rule; for ActiveSAM also the context bank's tokens, the preview's presence scores and the kept
words. Bar: max |Δ| <= 1e-4 (fp32, CPU) and >= 99.9 % equal labels.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT / "bench")]

BAR = 1e-4
LABELS_BAR = 0.999
# the random model's instance scores lie about 0.42-0.49: 0.44 keeps some on every parity photo (none pass 0.5, the
# row's own); ActiveSAM keeps its 0.3 (all of them). The background thresholds leave the photos partly background.
OVERRIDES = {"sam3": {"prob_thd": 0.2, "confidence_threshold": 0.44},
             "activesam": {"prob_thd": 0.02, "pruner_max_active": 8, "bucket_size": 4}}
KNOBS = {"sam3": {"prob_threshold": 0.2, "confidence_threshold": 0.44},
         "activesam": {"prob_threshold": 0.02, "max_active": 8, "bucket_size": 4, "preview_resolution": 224}}


def reduced_config() -> dict:
    """SAM 3's configuration (the family's ``meta_config``) at the parity's sizes (module docstring)."""
    from vpltool.models.backbones.sam3_weights import meta_config

    cfg = meta_config()
    cfg["vision_config"]["backbone_config"].update(
        hidden_size=128, intermediate_size=592, num_hidden_layers=4, num_attention_heads=2, image_size=336,
        window_size=8, global_attn_indexes=[1, 3], pretrain_image_size=112)
    cfg["vision_config"]["backbone_feature_sizes"] = [[96, 96], [48, 48], [24, 24]]
    cfg["text_config"].update(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2)
    cfg["detr_encoder_config"]["num_layers"] = 2
    cfg["detr_decoder_config"]["num_layers"] = 2
    return cfg


def arch_of(cfg: dict, full: bool = False) -> dict:
    """The reference runner's ``--arch`` of a configuration (the sizes its builder takes); ``full``: Meta's own
    sizes, which the runner then builds with Meta's builders unchanged (``"meta": true``) and ActiveSAM's 672-pixel
    preview."""
    vit, text = cfg["vision_config"]["backbone_config"], cfg["text_config"]
    return {"image": vit["image_size"], "pretrain": vit["pretrain_image_size"], "window": vit["window_size"],
            "vit_width": vit["hidden_size"], "vit_heads": vit["num_attention_heads"],
            "vit_depth": vit["num_hidden_layers"], "global": vit["global_attn_indexes"],
            "text_width": text["hidden_size"], "text_heads": text["num_attention_heads"],
            "text_layers": text["num_hidden_layers"], "encoder_layers": cfg["detr_encoder_config"]["num_layers"],
            "decoder_layers": cfg["detr_decoder_config"]["num_layers"], "preview": 672 if full else 224,
            "meta": full}


def setup(work: Path, images: int, arch: str = "reduced") -> dict:
    """The parity's files in ``work`` (module docstring), made when missing; ``arch`` ``full``: SAM 3 at Meta's
    own sizes (``meta_config``: 3.4 GB of fp32 weights written once) in place of :func:`reduced_config`."""
    import bench_cam
    import wordnet_fixture

    from vpltool.models.backbones.sam3_files import random_state, write_meta
    from vpltool.models.backbones.sam3_weights import meta_config

    work.mkdir(parents=True, exist_ok=True)
    cfg = meta_config() if arch == "full" else reduced_config()
    weights = work / "sam3.pt"
    if not weights.is_file():
        write_meta(weights, cfg, random_state(cfg, 0))
    (work / "arch.json").write_text(json.dumps(arch_of(cfg, arch == "full")))
    voc = work / "voc"
    photos = sorted((voc / "JPEGImages").glob("*.jpg"))
    if len(photos) != images:
        import shutil

        shutil.rmtree(voc, ignore_errors=True)
        bench_cam.make_voc(voc, images)
        photos = sorted((voc / "JPEGImages").glob("*.jpg"))
    wordnet_fixture.write(work / "nltk_data")
    return {"weights": weights, "arch": work / "arch.json", "photos": photos, "nltk_data": work / "nltk_data"}


def run_reference(args, s: dict, method: str, out: Path) -> float:
    env = {**os.environ, "NLTK_DATA": str(s["nltk_data"]), "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, str(Path(__file__).parent / "activesam_ref_runner.py"), "--clone", str(args.ref),
                    "--arch", str(s["arch"]), "--weights", str(s["weights"]), "--method", method, "--out", str(out),
                    "--overrides", json.dumps(OVERRIDES[method]), "--threads", "1", *map(str, s["photos"])],
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def vpltool_method(method: str, weights: Path, **knobs):
    """`segment`'s resolved method and its loaded backbone at the parity's settings (``knobs`` over them)."""
    from vpltool.config import SegmentConfig
    from vpltool.models.dense.method import resolve_method

    cfg = SegmentConfig.of(method, sam3_weights=str(weights), class_file="activesam:voc21",
                           **{**KNOBS[method], **knobs})
    dense = resolve_method(cfg)
    return dense, dense.load(None, "cpu")


def compare(method: str, s: dict, ref: Path) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from vpltool.data.class_files import read_class_file

    torch.set_num_threads(1)
    meta = json.loads((ref / "meta.json").read_text())
    names = [n for line in read_class_file("activesam:voc21") for n in line]
    dense, bb = vpltool_method(method, s["weights"])
    text = dense.hooks.query_text(bb, meta["query_words"], ["{}"])
    query_class = torch.tensor(meta["query_idx"])
    rows, worst = [], {"scores": 0.0, "probs": 0.0}
    equal = total = 0
    for i, path in enumerate(s["photos"]):
        want = torch.load(ref / f"photo_{i:03d}.pt", weights_only=False)
        photo = np.asarray(Image.open(path).convert("RGB"))
        size = photo.shape[:2]
        extras = [dense.hooks.extra_inputs(None, photo)]
        cpu = time.process_time()
        with torch.no_grad():
            scores = dense.hooks.dense_logits(bb, None, text, [size], dense.settings, extras)[0]
            probs, labels = dense.hooks.probabilities(bb, scores, query_class, len(set(meta["query_idx"])),
                                                      dense.settings)
        cpu = time.process_time() - cpu
        row = {"file": path.name, "size": list(size), "cpu_seconds": round(cpu, 3),
               "reference_cpu_seconds": meta["photos"][i]["cpu_seconds"],
               "scores": float((scores - want["scores"]).abs().max()),
               "probs": float((probs - want["probs"]).abs().max()),
               "labels_equal": float((labels == want["pred"]).float().mean()),
               "reference_classes": sorted(int(c) for c in want["pred"].unique()),
               "reference_score_max": float(want["scores"].max())}
        if method == "activesam":
            sam = bb.sam
            from vpltool.models.dense import activesam

            knobs = activesam.ActiveSamSettings(dense.cfg)
            pres = activesam.preview_presence(sam, torch.from_numpy(photo.copy()),
                                              bb.text_of([activesam.canonical(w) for w in meta["query_words"]]),
                                              knobs)
            row.update(presence=float((pres - want["presence"]).abs().max()),
                       active_equal=activesam.active_words(pres, knobs.quantile_alpha, knobs.max_active)
                       == want["active"], active=want["active"])
        worst = {k: max(worst[k], row[k]) for k in worst}
        equal += int((labels == want["pred"]).sum())
        total += labels.numel()
        rows.append(row)
    out = {"query_words_equal": names == meta["query_words"], **worst, "labels_equal": equal / total,
           "photos": rows}
    if method == "activesam":
        bank = dense.hooks._bank
        want = torch.load(ref / "photo_000.pt", weights_only=False)
        out["neighbors"] = float((bank.neighbors - want["neighbors"]).abs().max())
        has = want["has_hypernym"]
        out["hypernyms_equal"] = bool(torch.equal(bank.has_hypernym.cpu(), has))
        out["hypernyms"] = hypernym_gap(bank.hypernyms.cpu(), want["hypernyms"], has)
        out["presence"] = max(r["presence"] for r in rows)
        out["active_equal"] = all(r["active_equal"] for r in rows)
    out["bar_met"] = bool(out["query_words_equal"] and max(v for k, v in out.items() if k in (
        "scores", "probs", "neighbors", "hypernyms", "presence")) <= BAR and out["labels_equal"] >= LABELS_BAR
        and out.get("active_equal", True) and out.get("hypernyms_equal", True))
    return out


def hypernym_gap(ours, theirs, has) -> float:
    """The largest difference of the hypernym tokens ``[Q, M, d]`` of the words (their ``[Q, M]`` slots ``has``), each
    word's tokens matched in the order that fits best: nltk 3.9 on returns a synset's hypernyms from a set, so the
    reference's order follows its process's string hashing (vpltool takes them by name); the decoder reads the
    tokens without positions, so their order leaves every score as it is (the per-word scores above)."""
    import itertools

    worst = 0.0
    for q in range(ours.shape[0]):
        slots = [m for m in range(ours.shape[1]) if has[q, m]]
        if not slots:
            continue
        best = min(float((ours[q, list(p)] - theirs[q, slots]).abs().max())
                   for p in itertools.permutations(slots))
        worst = max(worst, best)
    return worst


def page(r: dict) -> dict:
    """The section docs/parity.md shows for this run (``docgen/parity_page.py`` reads it)."""
    rows = []
    for m in ("sam3", "activesam"):
        if m not in r:
            continue
        x = r[m]
        rows += [[f"{m}: per-word scores (`_inference_single_view`), max abs diff", x["scores"]],
                 [f"{m}: class scores after the alias collapse, max abs diff", x["probs"]],
                 [f"{m}: labels equal (its background rule at prob_thd {x['overrides']['prob_thd']})",
                  x["labels_equal"]]]
        if m == "activesam":
            rows += [["activesam: neighbour tokens, max abs diff", x["neighbors"]],
                     ["activesam: hypernym tokens, max abs diff (each word's in the order that fits)", x["hypernyms"]],
                     ["activesam: preview presence scores, max abs diff", x["presence"]],
                     ["activesam: kept words equal on every photo", x["active_equal"]]]
    arch = r["model"]["arch"]
    return {"title": "SAM 3 and ActiveSAM (`--dense sam3`, `--dense activesam`)",
            "command": f"`python parity/activesam_parity.py --ref ActiveSAM` (`parity/activesam_ref_runner.py` runs "
                       f"the clone's ActiveSAM and FrozenSAM3Segmentor with its vendored Meta sam3). Clone: "
                       f"{r['reference']['repo']} `{(r['reference']['commit'] or '?')[:7]}`; a reduced SAM 3 on both "
                       f"sides ({arch['vit_depth']}-block ViT of width {arch['vit_width']} at {arch['image']} px, "
                       f"windows of {arch['window']}, {arch['text_layers']} text layers, "
                       f"{arch['encoder_layers']} + {arch['decoder_layers']} DETR layers, 200 queries) with the sam3 "
                       f"family's seeded weights in Meta's layout; a small WordNet in nltk's format read by both; "
                       f"{r['images']} photos, configs/cfg_voc21.py's 21 words; ActiveSAM's preview prunes to 8 "
                       f"words, buckets of 4; fp32 on one thread of an {r.get('cpu', 'unknown CPU')}.",
            "bar": f"max abs diff <= {r['bar']['max_abs']:g}, labels equal >= {r['bar']['labels_equal']:.1%}",
            "rows": rows}


def commit_of(folder: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, required=True, help="a clone of VILA-Lab/ActiveSAM at 41cad43")
    ap.add_argument("--work", type=Path, default=Path("runs/parity-activesam"))
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--methods", default="sam3,activesam")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    import sam3_parity  # the CPU's name, as the SAM 3 parity writes it

    args.ref = args.ref.resolve()
    os.environ["NLTK_DATA"] = str((args.work / "nltk_data").resolve())
    s = setup(args.work.resolve(), args.images)
    result = {"reference": {"repo": "VILA-Lab/ActiveSAM", "commit": commit_of(args.ref),
                            "config": "configs/cfg_voc21.py"},
              "model": {"sam3": "reduced (parity/activesam_parity.py reduced_config), seeded random, Meta's layout",
                        "arch": json.loads(s["arch"].read_text())},
              "images": args.images, "threads": 1, "cpu": sam3_parity.cpu_name(),
              "bar": {"max_abs": BAR, "labels_equal": LABELS_BAR}}
    for method in args.methods.split(","):
        ref = args.work.resolve() / f"ref_{method}"
        seconds = run_reference(args, s, method, ref)
        result[method] = {"overrides": OVERRIDES[method], "vpltool_settings": KNOBS[method],
                          "reference_seconds": round(seconds, 1), **compare(method, s, ref)}
    result["bar_met"] = all(result[m]["bar_met"] for m in args.methods.split(","))
    result["page"] = page(result)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
