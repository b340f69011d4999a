"""The written extension points of the --dense methods (vpltool.models.dense.hooks): a misspelt hook is refused
where the class is written, every method resolves once to one object, and a method's per-image inputs (by key,
made from the dataset item), its segmentor hook and its post-process reach `segment`'s masks."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from vpltool.config import RuntimeConfig, SegmentConfig
from vpltool.config.dense import DENSE_SPECS
from vpltool.errors import ContractError
from vpltool.models.dense import DENSE_PRESETS, DenseHooks, dense_hooks
from vpltool.models.dense.hooks import HOOK_NAMES


def test_a_misspelt_hook_is_refused_where_the_class_is_written():
    with pytest.raises(ContractError) as e:
        class Misspelt(DenseHooks, method="test-misspelt", preset=None):  # noqa: F841
            def dense_logit(self, bb, pixels, text, sizes, settings, extras):
                return []
    line = str(e.value)
    assert "\n" not in line and "'dense_logit' is no dense hook" in line and "dense_logits" in line
    # a helper with a leading underscore is no hook, and is allowed
    class Helper(DenseHooks, method="test-helper", preset=None):
        def _window(self):
            return 1

    assert Helper().feature_grid.__qualname__ == "DenseHooks.feature_grid"


def test_the_hook_names_are_the_base_class_s_methods():
    public = {n for n, v in vars(DenseHooks).items() if not n.startswith("_") and inspect.isfunction(v)}
    assert public == set(HOOK_NAMES)


def test_every_method_resolves_to_its_hooks_and_preset():
    for name, spec in DENSE_SPECS.items():
        hooks = dense_hooks(name)
        assert isinstance(hooks, DenseHooks)
        if spec.module is None:
            assert type(hooks) is DenseHooks
        else:  # its module's class, named after it, carrying its preset
            assert type(hooks).method == name and type(hooks).__module__.endswith(spec.module)
            assert type(hooks).preset is DENSE_PRESETS[name] and DENSE_PRESETS[name].method == name


def test_a_method_s_own_segmentor_and_post_process_are_known_from_its_class():
    trident, proxyclip = type(dense_hooks("trident")), type(dense_hooks("proxyclip"))
    assert trident.own_segmentor and trident.own_postprocess  # computed whole; its probabilities always made
    assert not proxyclip.own_segmentor and not proxyclip.own_postprocess and not DenseHooks.own_segmentor


def test_segment_resolves_the_method_once_into_one_object():
    from vpltool.stages.segment import check_dense

    m = check_dense(SegmentConfig(dense="naclip", templates="a {}."))
    assert m.name == "naclip" and m.mixing == DENSE_PRESETS["naclip"] and not m.changed
    assert m.settings == SegmentConfig(dense="naclip").resolved() and m.proxy is None and m.sam is None
    assert m.hooks.cfg is m.cfg and m.spec is DENSE_SPECS["naclip"]
    changed = check_dense(SegmentConfig(dense="naclip", attention="qq"))
    assert changed.changed and changed.mixing.attention == "qq"


class _Probe(DenseHooks, method="test-probe", preset=None):
    """Reads a label per image from ``<folder>/<id>.npy`` (as a method reads ``<stem>.npz``), checks that its
    segmentor hook saw the image's extras, and paints the image with that label after the argmax."""

    _folder = None

    def extra_inputs(self, item, image):
        return {"fill": torch.tensor(np.load(self._folder / f"{item.id}.npy")), "id": item.id}

    def dense_logits(self, bb, pixels, text, sizes, settings, extras):
        for e in extras:
            e["seen"] = e["id"]  # what postprocess gets from the same pass
        return super().dense_logits(bb, pixels, text, sizes, settings, extras)

    def postprocess(self, bb, probs, labels, extras, settings):
        assert extras["seen"] == extras["id"]
        return probs, torch.full_like(labels, int(extras["fill"]))


def test_extra_inputs_by_item_and_postprocess_reach_the_masks(world, tiny_spec, tmp_path, monkeypatch):
    from vpltool import io
    from vpltool.data import open_dataset
    from vpltool.models.dense import method as method_module
    from vpltool.stages.segment import run_segment

    items = open_dataset(world, "val").items
    folder = tmp_path / "fills"
    folder.mkdir()
    fills = {item.id: 1 + i % 3 for i, item in enumerate(items)}
    for item_id, value in fills.items():
        np.save(folder / f"{item_id}.npy", np.int64(value))
    monkeypatch.setattr(_Probe, "_folder", folder)
    monkeypatch.setattr(method_module, "dense_hooks", lambda name, cfg=None: _Probe(cfg))
    cfg = SegmentConfig(dense="naclip", classes=("circle", "star", "square"), templates="a photo of a {}.",
                        background="grass,sky")
    run_segment(open_dataset(world, "val"), tmp_path / "out", tiny_spec, cfg, RuntimeConfig(device="cpu"))
    for item in items:
        mask = io.read_mask(io.mask_path(tmp_path / "out", item.id))
        assert (mask == fills[item.id]).all(), item.id


class _Vote(DenseHooks, method="test-vote", preset=None):
    """A region vote over the whole image after the argmax: every pixel takes the image's first label."""

    def postprocess(self, bb, probs, labels, extras, settings):
        return probs, torch.ones_like(labels)


def test_cam_dense_runs_the_method_s_postprocess(world, text_protos, tmp_path, monkeypatch):
    """`cam --dense` seeds come from the method's post-process too: a label the hook moves takes the pixel's top
    probability in that label's map (its argmax is the hook's), where before the seeds were the plain maps."""
    from vpltool import io
    from vpltool.data import open_dataset
    from vpltool.models.dense import method as method_module
    from vpltool.stages.cam.dense import run_dense_cam

    cfg, rt = SegmentConfig(dense="naclip", short_side=64), RuntimeConfig(device="cpu", workers=1)
    run_dense_cam(world, text_protos, tmp_path / "plain", cfg, rt, split="val")
    monkeypatch.setattr(method_module, "dense_hooks", lambda name, cfg=None: _Vote(cfg))
    run_dense_cam(world, text_protos, tmp_path / "voted", cfg, rt, split="val")
    moved = 0
    for item in open_dataset(world, "val").items:
        plain = io.read_cam(io.cam_path(tmp_path / "plain", item.id)).cams.astype(np.float32)
        voted = io.read_cam(io.cam_path(tmp_path / "voted", item.id)).cams.astype(np.float32)
        assert (voted[0] >= voted[1:].max(0, initial=0)).all()  # the first label's map holds every pixel's top
        if len(plain) > 1:
            moved += int((plain[0] < plain[1:].max(0)).sum())  # the plain seeds' argmax is elsewhere here
        others = plain[1:] == voted[1:]  # a map changes only where its pixel moved to the first label
        assert (others | (voted[1:] == plain[0][None])).all()
    assert moved > 0


class _OwnModel(DenseHooks, method="test-own-model", preset=None):
    """A method on a model of its own, whose probabilities are its own: every pixel its last query's class."""

    def backbone(self, device):
        return ("own model", device)

    def probabilities(self, bb, logits, query_class, n_classes, settings):
        import torch

        probs = torch.zeros(n_classes, *logits.shape[1:])
        probs[int(query_class[-1])] = 1
        return probs, torch.full(logits.shape[1:], int(query_class[-1]), dtype=torch.long)


def test_a_method_on_its_own_model_skips_the_clip_and_its_probabilities_hook_runs():
    import dataclasses

    import torch

    from vpltool.models import ModelSpec
    from vpltool.models.dense.method import DenseMethod
    from vpltool.models.dense.segmentor import scores_batch

    hooks = _OwnModel()
    assert _OwnModel.own_backbone and not DenseHooks.own_backbone and not type(dense_hooks("naclip")).own_backbone
    cfg = SegmentConfig(dense="naclip")
    method = DenseMethod("naclip", DENSE_SPECS["naclip"], cfg, cfg.resolved(), DENSE_PRESETS["naclip"], False, hooks)
    missing = ModelSpec("ViT-B-16", "/no/such/weights.pt")  # its check would refuse the missing file
    method.check_backbone(missing)
    assert method.load(missing, "cpu") == ("own model", "cpu")

    class Stub:  # what scores_batch reads of a backbone
        device = torch.device("cpu")

        def __init__(self):
            self.hooks = hooks

    settings = dataclasses.replace(cfg.resolved(), pamr_steps=0)
    hooks.dense_logits = lambda bb, pixels, text, sizes, s, extras: [torch.zeros(3, *sz) for sz in sizes]
    (probs, labels), = scores_batch(Stub(), torch.zeros(1, 3, 8, 8), torch.zeros(3, 4), torch.tensor([1, 2, 2]), 3,
                                    settings, [(5, 6)], torch.float32)
    assert labels.shape == (5, 6) and bool((labels == 2).all()) and float(probs[2].min()) == 1.0
