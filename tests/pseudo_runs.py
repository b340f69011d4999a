"""A Make run folder's pseudo-mask candidates, records only: what `choose-pseudo` reads (shared by its tests, the
report's and the robustness cases)."""

from __future__ import annotations

from pathlib import Path

from vpltool import io
from vpltool.stages.eval import scored_what


def candidate(root: Path, refine: str, miou: object, own: str = "none", split: str = "train") -> Path:
    """``refine``'s ``cams_vision`` and ``pseudo`` records laid out as the Makefile does (``root`` for ``own``, else
    ``root/refine``), and its eval JSON (``root/metrics[/refine]/pseudo.json``) scoring ``pseudo`` on ``split``."""
    base = root if refine == own else root / refine
    cams, pseudo = base / "cams_vision", base / "pseudo"
    for folder in (cams, pseudo):
        folder.mkdir(parents=True, exist_ok=True)
    io.write_stage_record(cams, "cam", params={"refine": refine}, inputs={}, count=0)
    dataset = {"kind": "folder", "root": str(root / "world"), "split": split}
    io.write_stage_record(pseudo, "crf", params={"confidence": 0.95},
                          inputs={"cams": io.sha256_file(io.stage_record_path(cams)), "dataset": dataset}, count=0)
    scored = (root / "metrics" if refine == own else root / "metrics" / refine) / "pseudo.json"
    scored.parent.mkdir(parents=True, exist_ok=True)
    io.write_json(scored, {"miou": miou, "n_images": 3, **scored_what(pseudo, "crf", split)})
    return scored


def scored_run(root: Path, train: dict[str, object], own: str = "none", split: str = "train") -> Path:
    """A run folder holding every refinement of ``train`` ({refine: mIoU}) as :func:`candidate` lays it out."""
    for refine, miou in train.items():
        candidate(root, refine, miou, own, split)
    return root


def decoder_candidate(root: Path, refine: str, miou: object, own: str = "none", split: str = "train") -> Path:
    """``refine``'s decoder (a stand-in file: its metadata names the masks it was trained on), its prediction on
    ``split`` (``pred_train``, records only) and that prediction's eval JSON
    (``root/metrics[/refine]/pred_train.json``), beside :func:`candidate`'s folders."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    base = root if refine == own else root / refine
    decoder = base / "decoder" / "decoder.safetensors"
    decoder.parent.mkdir(parents=True, exist_ok=True)
    pseudo = {"path": str(base / "pseudo"), "sha256": io.sha256_file(io.stage_record_path(base / "pseudo"))}
    save_file({"w": np.zeros(1, np.float32)}, str(decoder), metadata={"vpltool.inputs": json.dumps({"pseudo": pseudo})})
    pred = base / "pred_train"
    pred.mkdir(parents=True, exist_ok=True)
    dataset = {"kind": "folder", "root": str(root / "world"), "split": split}
    io.write_stage_record(pred, "predict", params={}, inputs={"decoder": io.sha256_file(decoder), "dataset": dataset},
                          count=0)
    scored = (root / "metrics" if refine == own else root / "metrics" / refine) / "pred_train.json"
    io.write_json(scored, {"miou": miou, "n_images": 3, **scored_what(pred, "predict", split)})
    return decoder
