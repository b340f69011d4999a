"""Prompts for the text tower, shared by `text-prototypes`, `segment` and `cam --dense`: templates, background words,
class-name rules, and the per-name mean of normalised prompt embeddings (:func:`encode_names`)."""

from __future__ import annotations

import json
import string
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import torch

from ... import io
from ...config import presets
from ...errors import VplError


def template_problem(template: str) -> str | None:
    """Why ``template`` is not a prompt template (exactly one ``{}``, no other format field), or None."""
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as e:  # a lone '{' or '}'
        return f"not a valid format string ({e}; write a literal brace as '{{{{' or '}}}}')"
    if len(fields) != 1:
        return f"has {len(fields)} '{{}}' fields; it needs exactly one, where the class name goes"
    if fields[0] != ("", "", None):
        return f"has the field '{{{fields[0][0]}}}'; use a plain '{{}}' for the class name"
    return None


TEMPLATE_FILE = "a template with '{}', clip-es, imagenet, ov-stitcher, or a file with one template per line"
BACKGROUND_FILE = "auto, voc, coco, none, words a,b,c, or a file with one word per line"

# per-class prompt sets (vpltool/assets/prompts/): the 80 ImageNet templates, and for a query word of the file's
# keys its whole sentences too (OV-Stitcher's prompts/class_biased_template.json, byte for byte: 309 words, 10 to 15
# sentences each; its configs/base_config.py template_path, used for every benchmark)
CLASS_PROMPT_SETS = {"ov-stitcher": "ov_stitcher_class_biased.json"}
PROMPT_ASSETS = Path(__file__).resolve().parents[2] / "assets" / "prompts"


class ClassTemplates(list):
    """Templates with ``{}`` (the list itself) and, per query word, whole sentences that join that word's prompts
    (:attr:`extra`: ``{word: (sentence, ...)}``, looked up by the exact word; a word without an entry has the
    templates alone). :func:`encode_names` averages a word's normalised prompt embeddings over both. Recorded as its
    templates (a list); its name is the run's ``--templates``."""

    def __init__(self, templates: Sequence[str], extra: Mapping[str, Sequence[str]], name: str):
        super().__init__(templates)
        self.extra = {str(k): tuple(v) for k, v in extra.items()}
        self.name = name


@lru_cache(maxsize=None)
def _class_sentences(name: str) -> dict[str, tuple[str, ...]]:
    data = json.loads((PROMPT_ASSETS / CLASS_PROMPT_SETS[name]).read_text(encoding="utf-8"))
    return {k: tuple(v) for k, v in data.items()}


def class_templates(name: str) -> ClassTemplates:
    """The bundled per-class prompt set ``name`` (:data:`CLASS_PROMPT_SETS`): the 80 ImageNet templates and its
    sentences per word."""
    return ClassTemplates(presets.IMAGENET_TEMPLATES, _class_sentences(name), name)


def templates_file(spec: str) -> Path | None:
    """The file ``--templates spec`` reads (one template per line), or None for a named set or a literal template;
    one line for a value that looks like a file but is none (:func:`vpltool.io.named_file`)."""
    if spec in ("clip-es", "imagenet") or spec in CLASS_PROMPT_SETS:
        return None
    return io.named_file(spec, "--templates", TEMPLATE_FILE) if "{" not in spec or io.is_regular_file(spec) else None


def background_file(spec: str) -> Path | None:
    """The file ``--background spec`` reads (one word per line), or None for a named list or words ``a,b,c``."""
    if spec in ("auto", "voc", "coco", "none"):
        return None
    return io.named_file(spec, "--background", BACKGROUND_FILE)


def prompt_files(templates: str, background: str) -> dict[str, Path]:
    """``{"templates": file, "background": file}`` for those of ``--templates`` / ``--background`` that name a file:
    what a record keeps by content (:func:`vpltool.io.file_identity`), so that the same file by another path is the
    same run and other bytes under its name are a changed input."""
    named = {"templates": templates_file(templates), "background": background_file(background)}
    return {key: path for key, path in named.items() if path is not None}


def resolve_templates(spec: str, per_class: bool = True) -> list[str]:
    """'clip-es' | 'imagenet' | 'ov-stitcher' (:func:`class_templates`) | a literal template containing '{}' | a
    file with one template per line. ``per_class`` False: a per-class set is refused (text-prototypes records its
    templates as a list, which ``predict`` re-encodes new names with).

    Each template holds exactly one ``{}`` and no other format field (a second ``{}`` made an IndexError deep in
    the encoder); a bad one is named, with its line in a file."""
    if spec == "clip-es":
        return [presets.CLIP_ES_TEMPLATE]
    if spec == "imagenet":
        return list(presets.IMAGENET_TEMPLATES)
    if spec in CLASS_PROMPT_SETS:
        if not per_class:
            raise VplError(f"--templates {spec}: its per-class sentences are for the dense segmentor (segment, "
                           "benchmark, vpltool.segmenter); give clip-es, imagenet, a template or a file here")
        return class_templates(spec)
    path = templates_file(spec)
    if path is None:
        problem = template_problem(spec) if "{" in spec else "not clip-es, imagenet, a template with '{}', or a file"
        if problem:
            raise VplError(f"--templates {spec!r}: {problem}")
        return [spec]
    lines = io.numbered_lines(path)
    if not lines:
        raise VplError(f"{path}: no templates; write one template containing '{{}}' per line")
    for n, template in lines:
        problem = template_problem(template)
        if problem:
            raise VplError(f"{path}: line {n} {template!r} {problem}")
    return [t for _, t in lines]


def check_class_names(classes: Sequence[str], where: str = "--classes") -> None:
    """Class names (index 0 = 'background') must be unique and 'background' only at 0
    (:func:`vpltool.config.presets.check_class_names`, the rule `predict --classes` follows too)."""
    if len(classes) < 2 or classes[0] != "background":
        raise VplError("classes must start with 'background' and name at least one class")
    presets.check_class_names(classes[1:], where)


def resolve_background(spec: str, preset: str | None, classes: Sequence[str] = ()) -> list[str]:
    """'auto' (the dataset preset's words, VOC's otherwise) | voc | coco | none | a file | 'w1,w2,...'.

    Preset word lists drop words that are class names (why CLIP-ES's COCO set lacks 'keyboard' and 'sign'):
    a word that is both a class and background would steal the class's pixels.
    """
    if spec == "auto":
        return list(presets.background_words(preset, classes))
    if spec in ("voc", "coco"):
        return list(presets.background_words(spec, classes))
    if spec == "none":
        return []
    path = background_file(spec)
    words = io.text_lines(path) if path is not None else [w.strip() for w in spec.split(",") if w.strip()]
    clash = presets.clashing_word(classes, words)
    if clash is not None:  # a background row identical to a class row takes half of that class's probability
        raise VplError(f"--background: {clash!r} is also a class; drop it from the background words")
    return words


def encode_names(bb, names: Sequence[str], templates: Sequence[str], exact: bool = False
                 ) -> torch.Tensor:
    """``[len(names), D]`` float32 unit rows: per name, the mean of its normalised prompt embeddings (``exact``:
    CLIP-ES's ``zeroshot_classifier`` arithmetic, see :meth:`vpltool.models.ClipBackbone.encode_text`). A name's
    prompts are the templates filled with it, and with :class:`ClassTemplates` its own sentences after them."""
    if not names:
        return torch.zeros(0, bb.embed_dim)
    extra = getattr(templates, "extra", None) or {}
    per_name = [[t.format(n) for t in templates] + list(extra.get(n, ())) for n in names]
    emb = bb.encode_text([p for prompts in per_name for p in prompts], exact=exact)
    mean = torch.stack([rows.mean(0) for rows in emb.split([len(p) for p in per_name])])
    return (mean / mean.norm(dim=-1, keepdim=True)).cpu()


__all__ = ["template_problem", "TEMPLATE_FILE", "BACKGROUND_FILE", "CLASS_PROMPT_SETS", "ClassTemplates",
           "class_templates", "templates_file", "background_file", "prompt_files", "resolve_templates",
           "check_class_names", "resolve_background", "encode_names"]
