"""The set-up the parity runners of the region methods share (CorrCLIP, OV-Stitcher, TextRegion, RADSeg): their
weights and photos made once in ``--work``, the clone's run in its own process reused while its stamp holds, the
digests and commits the JSON records, the comparison's sizes and the run itself (print one JSON object, ``--out``).

* :func:`clip_weights`: random ``ViT-B-16-quickgelu`` weights (seed 0, rounded to fp16 values:
  ``bench_cam.make_weights``) with ``text_layers`` text blocks, as ``.pt`` (the clones' loaders) and ``.safetensors``
  (vpltool), made once;
* :func:`parity_photos`: ``images`` of the parity photos (scikit-image's, ``bench_cam.make_voc``) in ``work/voc``;
  another count remakes them and removes the folders derived from them (``derived``: the region masks);
* :func:`run_reference`: a ``*_ref_runner.py`` in its own process (one thread, no CUDA, its warnings off), its
  output in ``out`` kept with :func:`stamp` of what it depends on, and reused while that stamp is the same;
* :func:`synonym_class_file`: a class file of the reference's with one more query on some rows, for the merge's
  parity (``--query-merge``);
* :func:`run`: the runner's main: a work folder (``--work`` or a temporary one), its JSON (timed, with its page
  section) printed and written to ``--out``.

It imports nothing from vpltool.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for _path in (str(ROOT / "bench"), str(HERE)):  # bench_cam (photos, weights) and the other runners, importable
    if _path not in sys.path:
        sys.path.insert(0, _path)

BAR = 1e-4  # max |Δ| of a compared tensor, fp32 on the CPU
LABELS_BAR = 0.999  # the share of equal labels
CLIP_MODEL = "ViT-B-16-quickgelu"  # the ViT-B/16 image tower with QuickGELU (OpenAI's, MetaCLIP's)
# the rows given one more query in the merge's parity: the rows (1, 4, 5, 10 and 20), the background's first
SYNONYM_ROWS = (1, 4, 5, 10, 20)


def file_digest(path: Path) -> str:
    """The first 16 hex digits of the sha256 of a file's bytes, or of a folder's files' bytes in name order."""
    path = Path(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()) if path.is_dir() else [path]:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def commit_of(folder: Path) -> str | None:
    """The checked-out commit of a clone (its git HEAD, or a carried copy's ``COMMIT``: benchlib.clone_commit), or
    None."""
    from benchlib import clone_commit

    return clone_commit(folder)


def max_abs(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def clip_weights(work: Path, text_layers: int, model: str = CLIP_MODEL) -> dict:
    """``{name, config_dir, pt, st}``: the random CLIP (module docstring), made once in ``work``."""
    import bench_cam
    import dense_parity as dp

    work.mkdir(parents=True, exist_ok=True)
    name, config_dir = dp.model_config(work, model, text_layers)
    pt, st = work / "weights.pt", work / "weights.safetensors"
    marker = work / "weights.json"
    if not (pt.is_file() and st.is_file() and marker.is_file() and json.loads(marker.read_text()) == {"model": name}):
        bench_cam.make_weights(work, name, config_dir)
        marker.write_text(json.dumps({"model": name}))
    return {"name": name, "config_dir": config_dir, "pt": pt, "st": st}


def parity_photos(work: Path, images: int, derived: tuple[str, ...] = ()) -> list[Path]:
    """``images`` parity photos in ``work/voc`` (module docstring), made once; ``derived``: folders of ``work``
    made from them, removed when the photos are remade."""
    import bench_cam

    voc = work / "voc"
    photos = sorted((voc / "JPEGImages").glob("*.jpg"))
    if len(photos) != images:
        shutil.rmtree(voc, ignore_errors=True)
        for name in derived:
            shutil.rmtree(work / name, ignore_errors=True)
        bench_cam.make_voc(voc, images)
        photos = sorted((voc / "JPEGImages").glob("*.jpg"))
    return photos


def run_reference(runner: str, args: list[str], stamp: dict, out: Path, threads: int,
                  env: dict[str, str] | None = None) -> bool:
    """Run ``parity/<runner>`` with ``args`` in its own process, its output in ``out``; an output there whose
    ``stamp.json`` is ``stamp`` (and that holds its ``meta.json``) is reused. Returns whether it was reused; a failed
    run ends this one with its command and its output's tail."""
    done = out / "stamp.json"
    if (out / "meta.json").is_file() and done.is_file() and json.loads(done.read_text()) == stamp:
        return True
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(HERE / runner), *args, "--out", str(out), "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONWARNINGS": "ignore", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    done.write_text(json.dumps(stamp))
    return False


def synonym_class_file(source: Path, target: Path, rows: tuple[int, ...] = SYNONYM_ROWS) -> Path:
    """``source`` (a reference's class file: one class a line, its queries ``; ``-separated, the background's
    first) with one more query on each of ``rows`` that it has: the row's first query again, with " object" after it
    (a distinct query, the same class). The references merge by position, so every row after the first such one is
    read as another class by their code (module docstring of :mod:`vpltool.models.dense.queries`)."""
    lines = source.read_text().splitlines()
    for r in rows:
        if 0 < r < len(lines):
            lines[r] = f"{lines[r]}; {lines[r].split('; ')[0]} object"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n")
    return target


def merge_result(equal: dict, total: int, worst: float, *, queries: int, classes: int, images: int,
                 reused: bool) -> dict:
    """The ``query_merge`` section of a parity JSON (CorrCLIP's, OV-Stitcher's, TextRegion's runners): ``equal``
    ``{(merge, "threshold" | "argmax"): pixels equal to the reference's}`` for each ``--query-merge``, of ``total``
    pixels a kind; ``worst`` the largest logit difference. The bar: ``reference``'s labels and the logits."""
    merges = list(dict.fromkeys(m for m, _ in equal))  # in the order the runner counted them
    share = {m: (equal[m, "threshold"] + equal[m, "argmax"]) / max(2 * total, 1) for m in merges}
    argmax_share = {m: equal[m, "argmax"] / max(total, 1) for m in merges}
    return {"class_file": f"its cls_voc21.txt with one more query on rows {', '.join(map(str, SYNONYM_ROWS))}",
            "queries": queries, "classes": classes, "images": images, "output_reused": reused,
            "seg_logits": worst, "labels_equal": share, "labels_equal_argmax": argmax_share,
            "bar_met": bool(worst <= BAR and share["reference"] >= LABELS_BAR)}


def merge_rows(r: dict, logits: str = "dense logits") -> list[list]:
    """A parity page's rows of the merge's parity (``r["query_merge"]``, written by CorrCLIP's, OV-Stitcher's and
    TextRegion's runners: the reference run on :func:`synonym_class_file`'s classes against vpltool's
    ``--query-merge``); none where the run made none. ``logits``: how the page names the compared logits."""
    m = r.get("query_merge")
    if m is None:
        return []
    where = f"synonyms on rows {', '.join(map(str, SYNONYM_ROWS))}, {m['images']} photos"
    return [[f"labels equal, --query-merge reference ({where}; threshold and argmax)",
             m["labels_equal"]["reference"]],
            ["labels equal, --query-merge max, vpltool's default (the same; not a bar)", m["labels_equal"]["max"]],
            ["the same at the argmax alone: reference / max", f"{m['labels_equal_argmax']['reference']:.4g} / "
             f"{m['labels_equal_argmax']['max']:.4g}"],
            [f"{logits} with those queries, max abs diff", m["seg_logits"]]]


def run(args, result: Callable[[Path], dict], page: Callable[[dict], dict]) -> dict:
    """A parity runner's main: ``result(work)`` (``--work`` or a temporary folder) with its ``seconds`` and its
    ``page`` section, printed as one JSON object and written to ``args.out`` when given."""
    with tempfile.TemporaryDirectory() as tmp:
        work = (args.work or Path(tmp)).resolve()
        start = time.perf_counter()
        out = result(work)
        out["seconds"] = round(time.perf_counter() - start, 1)
        out["page"] = page(out)
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return out


__all__ = ["ROOT", "BAR", "LABELS_BAR", "CLIP_MODEL", "SYNONYM_ROWS", "file_digest", "commit_of", "max_abs",
           "clip_weights", "parity_photos", "run_reference", "synonym_class_file", "run"]
