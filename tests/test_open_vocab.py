"""CMPA (SSR's prototype alignment, `train-decoder --lambda-proto`), held-out classes (`--ignore-classes`) and
open-vocabulary prediction (`predict --classes`). CPU, tiny, seeded."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vpltool import io
from vpltool.config import DecoderConfig, PredictConfig, RuntimeConfig
from vpltool.data.class_files import parse_class_names
from vpltool.decoder import (
    SegDecoder,
    cmpa_loss,
    load_decoder,
    mask_fractions,
    refresh_bank,
    spherical_kmeans,
)
from vpltool.errors import VplError
from vpltool.stages.predict import run_predict
from vpltool.stages.train_decoder import compute_losses, run_train_decoder
from vpltool.stages.train_decoder.data import held_out_label_map

TINY = DecoderConfig(dim=16, layers=1, heads=2, crop_size=64, batch_size=2, iters=4, checkpoint_every=2,
                     log_every=1, warmup_iters=2, lr=0.05)
CMPA = replace(TINY, lambda_proto=0.1, proto_every=2, proto_clusters=2)
CPU = RuntimeConfig(device="cpu", workers=1)
ROW_CLASS = torch.tensor([0, 0, 1, 2, 3])  # 2 background words, then classes 1..3


def _decoder(cfg: DecoderConfig) -> SegDecoder:
    torch.manual_seed(0)
    protos = F.normalize(torch.randn(len(ROW_CLASS), 8), dim=1)
    return SegDecoder(cfg, in_width=16, n_inputs=1, prototypes=protos, row_class=ROW_CLASS, temperature=0.05)


# --------------------------------------------------------------------------------------------- CMPA pieces
def test_mask_fractions_shape_and_values():
    target = torch.tensor([[0, 0, 1, 1], [0, 255, 1, 1], [2, 2, 2, 2], [2, 2, 255, 255]])[None]
    fr = mask_fractions(target, 3, (2, 2))
    assert fr.shape == (1, 3, 2, 2) and fr.dtype == torch.float32
    assert fr[0, 0, 0, 0].item() == pytest.approx(0.75)  # 3 of 4 pixels background, one ignored
    assert fr[0, 1, 0, 1].item() == 1.0 and fr[0, 2, 1, 1].item() == pytest.approx(0.5)
    assert fr[0, :, 1, 1].sum().item() == pytest.approx(0.5)  # ignored pixels count for no class


def test_cmpa_loss_on_a_hand_computed_case():
    regions = torch.tensor([[1.0, 0.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # classes 1, 2
    bank = torch.tensor([[[0.6, 0.8]], [[0.0, -1.0]]])  # K = 1 centre per class
    log_t = torch.tensor(math.log(0.5))  # a soft temperature keeps the hand figure away from float32's floor
    # logits /0.5: text1 2, text2 0, bank1 1.2, bank2 0; positives (class 1): text1 and bank1
    expected = math.log(math.exp(2) + 1 + math.exp(1.2) + 1) - math.log(math.exp(2) + math.exp(1.2))
    loss = cmpa_loss(regions, torch.tensor([1]), text, bank, torch.ones(2, 1, dtype=torch.bool), log_t)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # centres not built yet are left out: text rows only
    only_text = cmpa_loss(regions, torch.tensor([1]), text, bank, torch.zeros(2, 1, dtype=torch.bool), log_t)
    assert only_text.item() == pytest.approx(math.log(math.exp(2) + 1) - 2, rel=1e-5)
    # a region of class 2 at the same place, at SSR's 0.05: log(e^20 + e^12 + 2) - log 2
    wrong = cmpa_loss(regions, torch.tensor([2]), text, bank, torch.ones(2, 1, dtype=torch.bool),
                      torch.tensor(math.log(0.05)))
    assert wrong.item() == pytest.approx(math.log(math.exp(20) + math.exp(12) + 2) - math.log(2), rel=1e-5)


def test_cmpa_gradient_reaches_the_temperature_and_the_decoder():
    model = _decoder(replace(TINY, lambda_proto=0.1, dropout=0.0))
    assert model.proto_log_temp.requires_grad and model.proto_log_temp.item() == pytest.approx(math.log(0.05))
    assert model.proto_bank.shape == (3, 4, 8) and not model.proto_bank_valid.any()
    torch.manual_seed(1)
    feats = torch.randn(2, 1, 4, 4, 16)
    target = torch.randint(0, 4, (2, 4, 4)).repeat_interleave(16, 1).repeat_interleave(16, 2)
    losses = compute_losses(model, feats, target, model.cfg)
    assert set(losses) == {"loss", "ce", "rsc", "proto"} and losses["proto"].item() > 0
    losses["proto"].backward()
    assert model.proto_log_temp.grad is not None and model.proto_log_temp.grad.abs().item() > 0
    assert model.head.weight.grad.abs().sum().item() > 0
    # off by default: no temperature parameter, no bank, state dict of a plain decoder
    plain = _decoder(TINY)
    assert not hasattr(plain, "proto_log_temp") and "proto_bank" not in plain.state_dict()


def test_spherical_kmeans_finds_two_clusters():
    torch.manual_seed(0)
    a, b = F.normalize(torch.tensor([1.0, 0, 0]), dim=0), F.normalize(torch.tensor([0, 1.0, 0]), dim=0)
    x = torch.cat([a + 0.05 * torch.randn(10, 3), b + 0.05 * torch.randn(10, 3)])
    centres = spherical_kmeans(x, 2)
    assert centres.shape == (2, 3) and torch.allclose(centres.norm(dim=1), torch.ones(2))
    assert sorted((centres @ torch.stack([a, b]).T).argmax(1).tolist()) == [0, 1]
    assert spherical_kmeans(x[:1], 4).shape == (1, 3)  # fewer points than centres


def test_refresh_bank_fills_the_classes_present():
    model = _decoder(replace(TINY, lambda_proto=0.1, proto_clusters=2))
    target = torch.zeros(2, 64, 64, dtype=torch.long)
    target[0, :32] = 1
    target[1, :, :32] = 3  # class 2 never appears
    n = refresh_bank(model, [(torch.randn(2, 1, 4, 4, 16), target)])
    assert n == 2 and not model.training
    assert model.proto_bank_valid.tolist() == [[True, False], [False, False], [True, False]]
    assert torch.allclose(model.proto_bank[0, 0].norm(), torch.tensor(1.0))


def test_cmpa_training_logs_its_loss_keeps_its_bank_and_resumes_exactly(gt_pseudo, text_protos, tmp_path):
    ref = tmp_path / "ref"
    run_train_decoder(gt_pseudo, text_protos, ref, CMPA, CPU)
    records = [json.loads(line) for line in (ref / "log.jsonl").read_text().splitlines()]
    assert all(r["proto"] >= 0 for r in records) and any(r["proto"] > 0 for r in records)  # 0: a crop of no class
    tensors = io.read_tensors(ref / "decoder.safetensors", kind="decoder").tensors
    assert tensors["proto_bank_valid"].any()  # refreshed at iteration 2
    model, _ = load_decoder(ref / "decoder.safetensors")
    assert model.proto_log_temp.item() != pytest.approx(math.log(0.05), abs=1e-7)  # learned

    class Stop(Exception):
        pass

    def stop(it, record):
        if it == 2:
            raise Stop

    resumed = tmp_path / "resumed"
    with pytest.raises(Stop):
        run_train_decoder(gt_pseudo, text_protos, resumed, CMPA, CPU, on_iter=stop)
    run_train_decoder(gt_pseudo, text_protos, resumed, CMPA, CPU, resume=True)
    again = io.read_tensors(resumed / "decoder.safetensors", kind="decoder").tensors
    assert tensors.keys() == again.keys() and all(torch.equal(tensors[k], again[k]) for k in tensors)


def test_cmpa_options_are_checked():
    for bad in ({"lambda_proto": -1}, {"proto_temperature": 0}, {"proto_clusters": 0}, {"proto_every": 0}):
        with pytest.raises(VplError):
            DecoderConfig(**bad)
    assert DecoderConfig(iters=600).proto_period == 100 and DecoderConfig().proto_period == 5000


# --------------------------------------------------------------------------------------------- held-out classes
def test_held_out_label_map():
    classes = ["background", "a", "b", "c"]
    lut = held_out_label_map(classes, ("b",), "x")
    assert lut[[0, 1, 2, 3, 255]].tolist() == [0, 1, 255, 2, 255]
    assert held_out_label_map(classes, (), "x") is None
    with pytest.raises(VplError, match="not a class"):
        held_out_label_map(classes, ("zebra",), "x")
    with pytest.raises(VplError, match="every foreground class"):
        held_out_label_map(classes, ("a", "b", "c"), "x")
    with pytest.raises(VplError):
        DecoderConfig(ignore_classes=("background",))


@pytest.fixture(scope="module")
def held_out(gt_pseudo, text_protos, tmp_path_factory) -> Path:
    """A decoder trained without 'star' (its pixels ignored, its row dropped)."""
    out = tmp_path_factory.mktemp("held_out")
    run_train_decoder(gt_pseudo, text_protos, out, replace(TINY, ignore_classes=("star",)), CPU, val_split="val")
    return out / "decoder.safetensors"


def test_training_with_a_held_out_class(held_out, text_protos):
    model, f = load_decoder(held_out)
    assert "star" not in f.classes and len(f.classes) == 8 and model.n_classes == 8
    assert f.meta("held_out") == ["star"] and len(model.prototypes) == len(io.read_prototypes(text_protos).vectors) - 1
    prompts = f.meta("prompts")
    assert prompts["templates"] == ["a photo of a {}."] and prompts["background_words"] == ["grass", "sky", "wall",
                                                                                          "water"]


# --------------------------------------------------------------------------------------------- open vocabulary
def test_new_rows_are_scored_where_their_vector_points():
    """The tiny case of a class never trained on: its row is put where the embeddings of some pixels point, and
    those pixels (and no other class) take it."""
    model = _decoder(replace(TINY, dropout=0.0)).eval()
    torch.manual_seed(2)
    feats = torch.randn(1, 1, 4, 4, 16)
    with torch.no_grad():
        v = model.embed(feats)[0]  # [D, 4, 4]
        new_class = v[:, 0, 0]
        far = (torch.einsum("dhw,d->hw", v, new_class)).flatten().argmin()
        bg = v.flatten(1)[:, far]  # the background row: the pixel least like (0, 0)
        model.set_prototypes(torch.stack([new_class, bg]), torch.tensor([1, 0]))
        logits = model(feats)[1]
    assert logits.shape == (1, 2, 4, 4) and model.n_classes == 2
    pred = logits[0].argmax(0).flatten()
    assert pred[0].item() == 1 and pred[far].item() == 0  # the new class where its vector points, not everywhere


def test_parse_class_names(tmp_path):
    assert parse_class_names("a, b,c") == ("a", "b", "c")
    path = tmp_path / "names.txt"
    path.write_text("star\n\nring\n")
    assert parse_class_names(str(path)) == ("star", "ring")
    for bad in ("", "a,a", "a,background", "a,,b"):
        with pytest.raises(VplError):
            PredictConfig(classes=parse_class_names(bad))


def test_open_vocabulary_predict_and_eval_by_name(held_out, world, tmp_path):
    from vpltool.data import open_dataset
    from vpltool.stages.eval import run_eval

    classes = list(open_dataset(world, "val").classes)
    names = tuple(reversed(classes[1:]))  # every class, 'star' (held out) included, in another order
    out = tmp_path / "pred"
    with pytest.raises(Exception, match="classes"):  # without --classes the decoder's 8 classes do not fit
        run_predict(held_out, None, "val", tmp_path / "refused", PredictConfig(), CPU)
    summary = run_predict(held_out, None, "val", out, PredictConfig(classes=names, scales=(1.0,)), CPU)
    assert summary.done == 3
    record = io.read_json(out / "_stage.json")
    assert record["classes"] == ["background", *names] and record["params"]["classes"] == list(names)
    masks = [io.read_mask(p) for p in sorted(out.glob("*.png"))]
    assert all(m.shape == (96, 96) and m.max() <= len(names) for m in masks)
    result, scored = run_eval(out)
    assert scored == classes and 0.0 <= result["miou"] <= 1.0
    # the same masks scored with names mapped: a pixel predicted as names[0] counts for that class, not index 1
    gt = io.read_mask(open_dataset(world, "val").items[0].gt)
    pred = masks[0]
    mapped = np.array([0, *[classes.index(n) for n in names]], np.uint8)[pred]
    assert (mapped[pred > 0] != pred[pred > 0]).any() or not (pred > 0).any()
    assert gt.shape == pred.shape
    # a name the dataset lacks: eval refuses in one line
    record["classes"] = ["background", "zebra"]
    io.write_json(out / "_stage.json", io.seal(record))  # sealed again: not a hand edit
    with pytest.raises(VplError, match="zebra"):
        run_eval(out)


def test_eval_maps_a_reordered_class_list_by_name(world, tmp_path):
    """GT masks written under a permuted class list (and recorded so) score 1.0; unmapped they would not."""
    from vpltool.data import open_dataset
    from vpltool.stages.eval import run_eval

    dataset = open_dataset(world, "val")
    classes = list(dataset.classes)
    permuted = ["background", *reversed(classes[1:])]
    to_permuted = np.array([permuted.index(c) for c in classes] + [255] * (256 - len(classes)), np.uint8)
    to_permuted[255] = 255
    for item in dataset.items:
        io.write_mask(io.mask_path(tmp_path, item.id), to_permuted[io.read_mask(item.gt)])
    io.write_stage_record(tmp_path, "predict", params={}, inputs={"dataset": dataset.identity()},
                          count=len(dataset.items), classes=permuted)
    assert run_eval(tmp_path)[0]["miou"] == pytest.approx(1.0)
    record = io.read_json(tmp_path / "_stage.json")
    record["classes"] = classes  # the same masks read as if in the dataset's order
    io.write_json(tmp_path / "_stage.json", io.seal(record))
    assert run_eval(tmp_path)[0]["miou"] < 0.9


def test_prompt_recipe_of_vision_prototypes_reads_their_text_file(text_protos, tmp_path):
    from vpltool.stages.train_decoder import prompt_recipe

    text = io.read_prototypes(text_protos)
    vision = io.Prototypes(text.vectors, text.row_class, text.row_names, classes=text.classes, temperature=0.03,
                           source="vision", model=text.model,
                           params={"text_prototypes": io.file_identity(text_protos, source="text")})
    assert prompt_recipe(vision) == prompt_recipe(text) == {
        "templates": ["a photo of a {}."], "background_words": ["grass", "sky", "wall", "water"], "synonyms": True,
        "parity": "none"}
    gone = io.Prototypes(text.vectors, text.row_class, text.row_names, classes=text.classes, temperature=0.03,
                         source="vision", model=text.model, params={"text_prototypes": {"path": str(tmp_path / "x")}})
    assert prompt_recipe(gone) is None
