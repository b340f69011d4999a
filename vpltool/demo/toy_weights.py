"""Writing a toy model the demo world trains (the toy DINO, the toy SAM): its weights and their record, as shipped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def write_toy(out: Path, model: torch.nn.Module, record: dict[str, Any], kind: str, record_kind: str) -> None:
    """``model``'s state dict as safetensors at ``out`` plus ``record`` at ``out.with_suffix('.json')``, each
    written whole or not at all, and the last pair replaced only once both are written. ``kind`` /
    ``record_kind``: the files' kinds for the output guard (io.marks)."""
    from safetensors.torch import save_file

    from ..io import atomic_path
    from ..io.marks import marked

    out.parent.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    # both written whole before either replaces the last pair (a full disk, a kill while writing: the last weights
    # and their record stay together), then renamed one after the other
    with atomic_path(out) as tmp, atomic_path(out.with_suffix(".json")) as tmp_record:
        # vpltool.kind: what the output guard reads, so that no other run replaces it by mistake (nor this one
        # another file) without --overwrite
        save_file(weights, str(tmp), metadata={"format": "pt", "model": record["model"], "vpltool.kind": kind})
        Path(tmp_record).write_text(json.dumps(marked(record, record_kind), indent=1) + "\n")
    for path in (out, out.with_suffix(".json")):
        path.chmod(0o644)  # safetensors writes owner-only files; the package ships these
