"""`vpltool text-prototypes`: class names (+ synonyms) x templates + background words -> one prototypes file.

A class prototype is ``normalize(mean_t normalize(E_text(template_t.format(name))))``; with one template this is
the normalised embedding of one prompt (CLIP-ES). Synonyms are fused the CLIP-ES way, several names inside one
prompt ('bird avian'). Background words go through the same templates and become rows with class 0.
The file has the same kind and layout that `learn-prototypes` writes, so every consumer accepts either.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .. import io
from ..config import TextPrototypesConfig, presets, to_params
from ..data import recorded_folders
from ..device import resolve_device
from ..models import ClipBackbone, ModelSpec, check_tokenizer, load_model
from ..models.backbones.prompts import (  # the prompt rules, shared with `segment` and `cam --dense` on the core
    BACKGROUND_FILE,
    TEMPLATE_FILE,
    check_class_names,
    encode_names,
    resolve_background,
    resolve_templates,
    template_problem,
)
from ..runtime.numerics import run_numerics


def build_text_prototypes(bb: ClipBackbone, classes: Sequence[str],
                          cfg: TextPrototypesConfig = TextPrototypesConfig()) -> io.Prototypes:
    """Text prototypes for ``classes`` (index 0 = background): C class rows, then the background-word rows."""
    preset = presets.preset_for(classes)
    names = presets.prompt_names(classes, preset if cfg.synonyms else None)
    templates = resolve_templates(cfg.templates, per_class=False)
    background = resolve_background(cfg.background, preset, classes)
    exact = cfg.parity == "clip-es"
    vectors = torch.cat([encode_names(bb, names, templates, exact), encode_names(bb, background, templates, exact)])
    row_class = torch.cat([torch.arange(1, len(names) + 1), torch.zeros(len(background), dtype=torch.long)])
    # the resolved templates are recorded so that `predict --classes` can encode new names the same way
    params = {**to_params(cfg), "n_templates": len(templates), "template_list": templates,
              "background_words": background}
    return io.Prototypes(vectors, row_class, list(names) + background, classes=classes,
                         temperature=1.0 / bb.logit_scale, source="text", model=bb.spec.identity(), params=params)


def extract_context(features: str | Path, at: ModelSpec | None = None) -> tuple[dict, ModelSpec, list[str], dict]:
    """``(record, model spec, classes, dataset identity)`` of a finished `extract` folder: what `text-prototypes`
    takes from it (its classes and its CLIP; ``at``: where that CLIP lies now, a renamed folder given, taken when it
    holds the recorded bytes)."""
    from ..errors import ContractError

    record = io.read_stage_record(features, "extract")
    spec = ModelSpec.from_identity(io.recorded_model(record, features), features, at)
    if "classes" not in record or not isinstance(record["inputs"].get("dataset"), dict):
        missing = "classes" if "classes" not in record else "dataset"
        raise ContractError(f"{io.stage_record_path(features)}: names no {missing}; the folder is damaged: re-run "
                            "`vpltool extract` there with --overwrite")
    return record, spec, record["classes"], record["inputs"]["dataset"]


def run_text_prototypes(classes: Sequence[str], out: str | Path, spec: ModelSpec,
                        cfg: TextPrototypesConfig = TextPrototypesConfig(), device: str = "auto", *,
                        source: str | Path | None = None, overwrite: bool = False) -> io.Prototypes:
    """Encode and write the prototypes file; returns what was written.

    The output path (never the ``source`` extract folder it was read from, nor in its dataset), the classes and the
    templates are checked before the model loads (a wrong ``-o`` costs nothing); a file there is replaced if it holds
    text prototypes, anything else only with ``overwrite``."""
    out = io.check_writable_target(out, option="--out")
    files = {"--templates": cfg.templates, "--background": cfg.background}
    io.check_outputs("text-prototypes", {"--out": (out, "file", "prototypes:text")}, overwrite=overwrite,
                     inputs={"the extract folder": source,
                             **{option: spec for option, spec in files.items() if io.is_regular_file(spec)}},
                     protected=recorded_folders(source) if source is not None else ())
    check_class_names(classes)
    resolve_templates(cfg.templates, per_class=False)
    resolve_background(cfg.background, presets.preset_for(classes), classes)
    check_tokenizer(spec)  # before the model builds: SigLIP 2's tokenizer offline is one line, not minutes of retries
    bb = load_model("clip", spec, resolve_device(device))
    protos = build_text_prototypes(bb, classes, cfg)
    io.write_prototypes(out, protos, numerics=run_numerics())  # fp32 on every device: no --precision takes part
    return protos


__all__ = ["extract_context", "template_problem", "TEMPLATE_FILE", "BACKGROUND_FILE", "resolve_templates",
           "check_class_names",
           "resolve_background", "encode_names", "build_text_prototypes", "run_text_prototypes"]
