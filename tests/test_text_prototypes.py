"""`text-prototypes`: layout of the file, the template ensemble, CLIP-ES synonyms, template specs."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from vpltool import io
from vpltool.config import TextPrototypesConfig, presets
from vpltool.errors import VplError
from vpltool.models import load_backbone
from vpltool.stages.text_prototypes import (
    build_text_prototypes,
    encode_names,
    resolve_background,
    resolve_templates,
    run_text_prototypes,
)

WORLD_CLASSES = ("background", "circle", "star", "square", "triangle", "ring", "cross", "hexagon", "diamond")


@pytest.fixture(scope="module")
def bb(tiny_spec):
    torch.manual_seed(0)
    return load_backbone(tiny_spec, "cpu")


def test_file_layout(text_protos, tiny_spec):
    p = io.read_prototypes(text_protos, classes=WORLD_CLASSES, dim=32)
    assert p.vectors.shape == (8 + 4, 32)
    assert torch.allclose(p.vectors.norm(dim=1), torch.ones(12), atol=1e-5)
    assert p.row_class.tolist() == list(range(1, 9)) + [0] * 4
    assert p.row_names == list(WORLD_CLASSES[1:]) + ["grass", "sky", "wall", "water"]
    assert p.source == "text" and p.model == tiny_spec.identity()
    assert p.temperature == pytest.approx(0.07, rel=1e-4)  # 1 / logit_scale of a fresh CLIP
    assert p.params["n_templates"] == 1 and p.params["background_words"] == ["grass", "sky", "wall", "water"]


def test_ensemble_is_the_normalised_mean_of_normalised_prompts(bb):
    templates = ["a photo of a {}.", "a drawing of the {}.", "{}"]
    got = encode_names(bb, ["cat", "dog"], templates)
    assert got.shape == (2, 32) and got.dtype == torch.float32
    for row, name in enumerate(["cat", "dog"]):
        per_template = bb.encode_text([t.format(name) for t in templates])  # [3, D] unit rows
        assert per_template.mean(0).norm() < 0.999  # a plain mean is shorter than 1: renormalising matters
        assert torch.allclose(got[row], F.normalize(per_template.mean(0), dim=0), atol=1e-6)


def test_one_template_is_one_prompt(bb):
    cfg = TextPrototypesConfig(templates="a photo of a {}.", background="none")
    p = build_text_prototypes(bb, ("background", "cat", "dog"), cfg)
    assert torch.allclose(p.vectors, bb.encode_text(["a photo of a cat.", "a photo of a dog."]), atol=1e-6)
    assert p.row_class.tolist() == [1, 2] and len(p.background_rows()) == 0


def test_ensemble_written_from_a_template_file(bb, tmp_path):
    path = tmp_path / "templates.txt"
    path.write_text("a photo of a {}.\n\n  a drawing of the {}.  \n")
    assert resolve_templates(str(path)) == ["a photo of a {}.", "a drawing of the {}."]
    p = build_text_prototypes(bb, ("background", "cat"), TextPrototypesConfig(templates=str(path), background="sky"))
    emb = bb.encode_text(["a photo of a cat.", "a drawing of the cat.", "a photo of a sky.", "a drawing of the sky."])
    expected = F.normalize(torch.stack([emb[:2].mean(0), emb[2:].mean(0)]), dim=1)
    assert torch.allclose(p.vectors, expected, atol=1e-6)
    assert p.params["n_templates"] == 2


def test_voc_classes_use_clip_es_synonyms(bb):
    classes = ("background", *presets.VOC_CLASSES)
    p = build_text_prototypes(bb, classes, TextPrototypesConfig())
    assert p.row_names[:20] == list(presets.VOC_CLIP_ES_NAMES)
    assert "bird avian" in p.row_names and "person with clothes,people,human" in p.row_names
    assert p.row_names[20:] == list(presets.VOC_BACKGROUND)  # background 'auto' -> the VOC words
    assert p.vectors.shape == (20 + 25, 32) and p.row_class[:20].tolist() == list(range(1, 21))
    expected = bb.encode_text([presets.CLIP_ES_TEMPLATE.format("bird avian")])[0]
    assert torch.allclose(p.vectors[2], expected, atol=1e-6)
    plain = build_text_prototypes(bb, classes, TextPrototypesConfig(synonyms=False, background="none"))
    assert plain.row_names == list(presets.VOC_CLASSES) and plain.vectors.shape == (20, 32)


def test_template_specs():
    assert resolve_templates("clip-es") == ["a clean origami {}."]
    imagenet = resolve_templates("imagenet")
    assert len(imagenet) == 80 and len(set(imagenet)) == 80 and all("{}" in t for t in imagenet)
    assert resolve_templates("{}") == ["{}"]
    assert resolve_templates("an {} here") == ["an {} here"]
    with pytest.raises(VplError, match="not clip-es, imagenet"):
        resolve_templates("no placeholder")


def test_template_file_line_without_placeholder_is_refused(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a photo of a {}.\na photo\n")
    with pytest.raises(VplError, match="t.txt: line 2 'a photo' has 0 '{}' fields; it needs exactly one"):
        resolve_templates(str(path))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(VplError, match="empty.txt: no templates"):
        resolve_templates(str(empty))


def test_background_specs(tmp_path):
    assert resolve_background("none", None) == []
    assert resolve_background(" grass, sky ,,", None) == ["grass", "sky"]
    assert resolve_background("coco", "voc") == list(presets.COCO_BACKGROUND)
    assert resolve_background("auto", "coco") == list(presets.COCO_BACKGROUND)
    words = tmp_path / "bg.txt"
    words.write_text("road\n\nriver\n")
    assert resolve_background(str(words), None) == ["road", "river"]


def test_auto_background_drops_words_that_are_classes(bb):
    p = build_text_prototypes(bb, ("background", "grass", "cat"), TextPrototypesConfig())
    assert p.row_names.count("grass") == 1


def test_run_refuses_classes_without_background(tiny_spec, tmp_path):
    with pytest.raises(VplError, match="start with 'background'"):
        run_text_prototypes(("cat", "dog"), tmp_path / "p.safetensors", tiny_spec, device="cpu")
    assert not (tmp_path / "p.safetensors").exists()


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_bad_output_is_refused_before_the_model_loads(tiny_spec, tmp_path, monkeypatch, kind):
    """`-o EXISTING_FOLDER` once failed with IsADirectoryError after loading the model."""
    import vpltool.stages.text_prototypes as tp

    out = tmp_path / "out"
    out.mkdir() if kind == "folder" else os.mkfifo(out)
    monkeypatch.setattr(tp, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(VplError, match=f"^{out}: (is a folder|exists and is not a regular file)"):
        run_text_prototypes(("background", "cat"), out, tiny_spec, device="cpu")


def test_class_templates_add_each_words_own_sentences(bb):
    from vpltool.models.backbones.prompts import ClassTemplates

    templates = ClassTemplates(["a photo of a {}.", "{}"], {"cat": ("a small furry animal", "whiskers")}, "t")
    got = encode_names(bb, ["cat", "dog"], templates)
    cat = bb.encode_text(["a photo of a cat.", "cat", "a small furry animal", "whiskers"])
    assert torch.allclose(got[0], F.normalize(cat.mean(0), dim=0), atol=1e-6)
    assert torch.allclose(got[1], encode_names(bb, ["dog"], ["a photo of a {}.", "{}"])[0], atol=1e-6)  # no entry


def test_ov_stitcher_templates_are_the_80_and_its_sentences():
    templates = resolve_templates("ov-stitcher")
    assert list(templates) == list(presets.IMAGENET_TEMPLATES) and templates.name == "ov-stitcher"
    assert len(templates.extra) == 309 and sum(map(len, templates.extra.values())) == 4625
    assert templates.extra["people"][0] == "a two-legged human with a head and body"
    assert "background" in templates.extra and "person" not in templates.extra  # its class files say 'people'
    with pytest.raises(VplError, match="ov-stitcher: its per-class sentences are for the dense segmentor"):
        resolve_templates("ov-stitcher", per_class=False)
