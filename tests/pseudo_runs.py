"""A Make run folder's pseudo-mask candidates, records only: what `choose-pseudo` reads (shared by its tests, the
report's and the robustness cases)."""

from __future__ import annotations

from pathlib import Path

from vpltool import io
from vpltool.config import PSEUDO_RULES
from vpltool.demo.choose_pseudo import split_candidate
from vpltool.stages.eval import scored_what


def _where(root: Path, refine: str, own: str) -> tuple[Path, Path, str | None]:
    """Candidate ``refine``'s folder and metrics folder as the Makefile lays them out (``R+K``: R's ``K/``), and its
    sam-pseudo rule K (None: a crf candidate)."""
    base, rule = split_candidate(refine)
    folder = root if base == own else root / base
    metrics = root / "metrics" if base == own else root / "metrics" / base
    return (folder / rule, metrics / rule, rule) if rule else (folder, metrics, None)


def candidate(root: Path, refine: str, miou: object, own: str = "none", split: str = "train") -> Path:
    """``refine``'s ``cams_vision`` and ``pseudo`` records laid out as the Makefile does (``root`` for ``own``, else
    ``root/refine``; ``R+K``: a `sam-pseudo --masks K` folder at ``R``'s ``K/pseudo``), and its eval JSON
    (``root/metrics[/refine]/pseudo.json``) scoring ``pseudo`` on ``split``."""
    base, metrics, rule = _where(root, refine, own)
    cams, pseudo = (base.parent if rule else base) / "cams_vision", base / "pseudo"
    for folder in (cams, pseudo):
        folder.mkdir(parents=True, exist_ok=True)
    if not io.stage_record_path(cams).is_file():  # R and R+K share R's CAMs
        io.write_stage_record(cams, "cam", params={"refine": split_candidate(refine)[0]}, inputs={}, count=0)
    dataset = {"kind": "folder", "root": str(root / "world"), "split": split}
    stage = PSEUDO_RULES[rule or "crf"]
    io.write_stage_record(pseudo, stage, params={"masks": rule} if rule else {"confidence": 0.95},
                          inputs={"cams": io.sha256_file(io.stage_record_path(cams)), "dataset": dataset}, count=0)
    scored = metrics / "pseudo.json"
    scored.parent.mkdir(parents=True, exist_ok=True)
    io.write_json(scored, {"miou": miou, "n_images": 3, **scored_what(pseudo, stage, split)})
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

    base, metrics, _ = _where(root, refine, own)
    decoder = base / "decoder" / "decoder.safetensors"
    decoder.parent.mkdir(parents=True, exist_ok=True)
    pseudo = {"path": str(base / "pseudo"), "sha256": io.sha256_file(io.stage_record_path(base / "pseudo"))}
    save_file({"w": np.zeros(1, np.float32)}, str(decoder), metadata={"vpltool.inputs": json.dumps({"pseudo": pseudo})})
    pred = base / "pred_train"
    pred.mkdir(parents=True, exist_ok=True)
    dataset = {"kind": "folder", "root": str(root / "world"), "split": split}
    io.write_stage_record(pred, "predict", params={}, inputs={"decoder": io.sha256_file(decoder), "dataset": dataset},
                          count=0)
    scored = metrics / "pred_train.json"
    io.write_json(scored, {"miou": miou, "n_images": 3, **scored_what(pred, "predict", split)})
    return decoder
