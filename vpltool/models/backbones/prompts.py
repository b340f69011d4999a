"""Prompts for the text tower, shared by `text-prototypes`, `segment` and `cam --dense`: templates, background words,
class-name rules, and the per-name mean of normalised prompt embeddings (:func:`encode_names`)."""

from __future__ import annotations

import string
from collections.abc import Sequence

import torch

from ... import io, presets
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


TEMPLATE_FILE = "a template with '{}', clip-es, imagenet, or a file with one template per line"
BACKGROUND_FILE = "auto, voc, coco, none, words a,b,c, or a file with one word per line"


def resolve_templates(spec: str) -> list[str]:
    """'clip-es' | 'imagenet' | a literal template containing '{}' | a file with one template per line.

    Each template holds exactly one ``{}`` and no other format field (a second ``{}`` made an IndexError deep in
    the encoder); a bad one is named, with its line in a file."""
    if spec == "clip-es":
        return [presets.CLIP_ES_TEMPLATE]
    if spec == "imagenet":
        return list(presets.IMAGENET_TEMPLATES)
    path = io.named_file(spec, "--templates", TEMPLATE_FILE) if "{" not in spec or io.is_regular_file(spec) \
        else None
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
    (:func:`vpltool.presets.check_class_names`, the rule `predict --classes` follows too)."""
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
    path = io.named_file(spec, "--background", BACKGROUND_FILE)
    words = io.text_lines(path) if path is not None else [w.strip() for w in spec.split(",") if w.strip()]
    clash = presets.clashing_word(classes, words)
    if clash is not None:  # a background row identical to a class row takes half of that class's probability
        raise VplError(f"--background: {clash!r} is also a class; drop it from the background words")
    return words


def encode_names(bb, names: Sequence[str], templates: Sequence[str], exact: bool = False
                 ) -> torch.Tensor:
    """``[len(names), D]`` float32 unit rows: per name, the mean of its normalised prompt embeddings (``exact``:
    CLIP-ES's ``zeroshot_classifier`` arithmetic, see :meth:`vpltool.models.ClipBackbone.encode_text`)."""
    if not names:
        return torch.zeros(0, bb.embed_dim)
    prompts = [t.format(n) for n in names for t in templates]
    emb = bb.encode_text(prompts, exact=exact).view(len(names), len(templates), -1)
    mean = emb.mean(1)
    return (mean / mean.norm(dim=-1, keepdim=True)).cpu()


__all__ = ["template_problem", "TEMPLATE_FILE", "BACKGROUND_FILE", "resolve_templates", "check_class_names",
           "resolve_background", "encode_names"]
