"""The feature cache of `train-text` (:mod:`vpltool.stages.train_text.cache`) on Talk2DINO, whose DINO and CLIP are
frozen: the step from cached features is the uncached step bit for bit (loss, gradients, the checkpoint after N
steps), the cache is read on later epochs and after a stop, and a damaged entry or a cache of another DINO is never
used. The toy DINO and toy CLIP on a tiny world."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from vpltool import io
from vpltool.config import RuntimeConfig
from vpltool.errors import VplWarning
from vpltool.models.text.family import caches_frozen_side, register_text_family, text_family
from vpltool.stages.train_text import run_train_text

REPO = Path(__file__).resolve().parents[1]
TOY_DINO = REPO / "vpltool" / "assets" / "toy-dino" / "model.safetensors"
# 16 pairs, batch 4, 2 epochs = 8 iterations at 32-px views (a 2x2 patch grid of the toy DINO)
SMALL = dict(batch_size=4, epochs=2, crop_size=32, log_every=1, checkpoint_every=2, dino_weights=str(TOY_DINO))
FAM = "talk2dino"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from vpltool.demo.make_world import write_dataset

    return write_dataset(tmp_path_factory.mktemp("world") / "w", n_train=16, n_val=2, seed=0)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfg(**kw):
    return text_family(FAM).TrainConfig.recipe_config("demo", **{**SMALL, **kw})


def _train(world, out, workers=1, **kw):
    how = {k: kw.pop(k) for k in ("resume", "stop_after") if k in kw}
    return run_train_text(world, out, _cfg(**kw), RuntimeConfig(device="cpu", workers=workers), **how)


def _checkpoint(run: Path) -> dict[str, torch.Tensor]:
    return io.read_tensors(run / "checkpoints" / "last.safetensors", kind=_cfg().CHECKPOINT_KIND).tensors


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _entries(run: Path, side: str = "image") -> list[Path]:
    return sorted((run / "cache" / side).glob("*/*.safetensors"))


class _Counting:
    """The family's frozen_image_features, counting the images it runs the DINO on."""

    def __init__(self, monkeypatch):
        self.rows, fam = 0, text_family(FAM)
        own = type(fam).frozen_image_features

        def counted(this, model, images):
            self.rows += images.shape[0]
            return own(this, model, images)

        monkeypatch.setattr(type(fam), "frozen_image_features", counted)


def test_the_step_from_frozen_features_is_the_step_bit_for_bit():
    fam = text_family(FAM)
    model = fam.build_model(fam.model_config(_cfg()), seed=0)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 32, 32, generator=g)
    tokens = fam.tokenizer(model.cfg)(["a red circle", "a blue cross", "a big circle", "a blue circle"])
    grads = []
    for run in ("plain", "cached"):
        model.zero_grad(set_to_none=True)
        out = fam.forward_train(model, images, tokens) if run == "plain" else \
            fam.forward_train_from(model, {**fam.frozen_image_features(model, images),
                                           **fam.frozen_text_features(model, tokens)})
        out["loss"].backward()
        grads.append((out["loss"].detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    assert torch.equal(grads[0][0], grads[1][0]) and grads[0][0] > 0
    assert all(torch.equal(a, b) for a, b in zip(grads[0][1], grads[1][1])) and len(grads[0][1]) == 4
    assert fam.frozen_identity(model)["dino"].startswith("sha256:")  # the toy DINO's file digest
    assert caches_frozen_side(fam) and not caches_frozen_side(text_family("pgseg"))


def test_a_cached_run_gives_the_uncached_checkpoint_and_reads_the_cache_after_its_first_epoch(world, tmp_path,
                                                                                            monkeypatch):
    plain = _train(world, tmp_path / "plain", feature_cache=False)
    assert not (tmp_path / "plain" / "cache").exists()
    counting = _Counting(monkeypatch)
    cached = _train(world, tmp_path / "cached")
    assert counting.rows == 16  # epoch 0's images; epoch 1 read them back
    captions = len(set(json.loads((world / "captions.json").read_text())[p.stem] for p in
                       (world / "images").glob("train_*.png")))
    assert len(_entries(tmp_path / "cached")) == 16 and len(_entries(tmp_path / "cached", "text")) == captions
    assert _same(_checkpoint(tmp_path / "plain"), _checkpoint(tmp_path / "cached"))  # model and Adam, 8 steps
    a, b = (text_family(FAM).load_checkpoint(s.model)[1] for s in (plain, cached))
    assert _same(a, b)
    # two loading workers: a batch prefetched before the previous one's entries were written mixes read and new
    # pairs; its side is computed whole, as the uncached step does (a backbone's rounding can follow the batch's size)
    _train(world, tmp_path / "workers", workers=2)
    assert _same(_checkpoint(tmp_path / "plain"), _checkpoint(tmp_path / "workers"))
    # a run stopped in its first epoch resumes from the pairs it kept: only the others are computed again
    counting.rows = 0
    _train(world, tmp_path / "stopped", stop_after=2)
    assert counting.rows == 8 and len(_entries(tmp_path / "stopped")) == 8
    resumed = _train(world, tmp_path / "stopped", resume=True)
    assert counting.rows == 16 and resumed.start == 2
    assert _same(_checkpoint(tmp_path / "plain"), _checkpoint(tmp_path / "stopped"))


def test_a_damaged_entry_is_named_and_made_again_and_another_dinos_cache_is_cleared(world, tmp_path, monkeypatch):
    run = tmp_path / "run"
    _train(world, run, epochs=1)
    entries = _entries(run)
    data = bytearray(entries[0].read_bytes())
    data[-3] ^= 0xFF  # a flipped byte in its tensors
    entries[0].write_bytes(bytes(data))
    entries[1].write_bytes(b"not a safetensors file")
    counting = _Counting(monkeypatch)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        run_train_text(world, run, _cfg(epochs=1), RuntimeConfig(device="cpu", workers=1, overwrite=True))
    said = [str(w.message) for w in seen if issubclass(w.category, VplWarning)]
    assert any(str(entries[0]) in s and "do not match their checksum" in s and "\n" not in s for s in said), said
    assert any(str(entries[1]) in s and "not a safetensors file" in s for s in said), said
    assert counting.rows in (4, 8)  # the one or two batches of 4 that hold those entries, computed whole
    assert all(e.read_bytes() != b"not a safetensors file" for e in _entries(run)) and len(_entries(run)) == 16
    # another DINO's bytes: the cache of the old one is not read (cleared with one line), the run is the uncached one
    dino = tmp_path / "dino.safetensors"
    shutil.copy(TOY_DINO, dino)
    from safetensors.torch import load_file, save_file

    state = load_file(dino)
    state["cls_token"] = state["cls_token"] + 0.5
    save_file(state, str(dino))
    counting.rows = 0
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        run_train_text(world, run, _cfg(epochs=1, dino_weights=str(dino)),
                       RuntimeConfig(device="cpu", workers=1, overwrite=True))
    said = [str(w.message) for w in seen if issubclass(w.category, VplWarning)]
    assert any("a feature cache made dino sha256:" in s and "cleared" in s for s in said), said
    assert counting.rows == 16
    run_train_text(world, tmp_path / "plain", _cfg(epochs=1, dino_weights=str(dino), feature_cache=False),
                   RuntimeConfig(device="cpu", workers=1))
    assert _same(_checkpoint(run), _checkpoint(tmp_path / "plain"))


def test_an_augmented_view_caches_nothing_and_says_so(world, tmp_path):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _train(world, tmp_path / "aug", epochs=1, min_scale=0.5)
    assert any("the view is augmented (--min-scale 0.5)" in str(w.message) for w in seen)
    assert not (tmp_path / "aug" / "cache").exists()


def test_the_frozen_hooks_go_together(monkeypatch):
    import text_family_stand_in as toy

    toy.install_row(monkeypatch)

    class Half(toy.ToyTextFamily):
        def frozen_image_features(self, model, images):
            return {}

    with pytest.raises(TypeError, match="defines frozen_image_features but not forward_train_from, frozen_identity, "
                                        "frozen_text_features"):
        register_text_family(Half())


def test_a_run_holds_its_features_in_memory_and_takes_its_later_epochs_from_there(world, tmp_path, monkeypatch):
    from vpltool.stages import train_text
    from vpltool.stages.train_text import cache

    made, own = [], train_text.loader
    monkeypatch.setattr(train_text, "loader", lambda *a, **k: (made.append(1), own(*a, **k))[1])
    _train(world, tmp_path / "held")  # 2 epochs: the first through the loader, the second from memory
    assert len(made) == 1
    made.clear()
    monkeypatch.setattr(cache, "HOLD_SHARE", 0.0)  # nothing may be held: every epoch through the loader and files
    _train(world, tmp_path / "streamed")
    assert len(made) == 2
    assert _same(_checkpoint(tmp_path / "held"), _checkpoint(tmp_path / "streamed"))


def test_overwrite_keeps_the_last_result_until_a_checkpoint_and_a_cache_link_stays_a_link(world, tmp_path):
    """``--overwrite`` replaces a finished run's model, checkpoint, record and log only once the new run writes a
    checkpoint of its own (a run stopped before one leaves them whole, its log lines unwritten); a cache reached
    through a link to another identity's is emptied, not unlinked (rmtree refused a link), and stays a link."""
    run = tmp_path / "run"
    _train(world, run, epochs=1)  # 4 iterations, a checkpoint every 2
    kept = {p: p.read_bytes() for p in (run / "talk2dino.safetensors", run / "_stage.json", run / "log.jsonl",
                                         run / "checkpoints" / "last.safetensors")}
    run_train_text(world, run, _cfg(epochs=1), RuntimeConfig(device="cpu", workers=1, overwrite=True), stop_after=1)
    assert {p: p.read_bytes() for p in kept} == kept
    elsewhere = tmp_path / "elsewhere"
    shutil.move(run / "cache", elsewhere)
    (run / "cache").symlink_to(elsewhere)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        run_train_text(world, run, _cfg(epochs=1, crop_size=48), RuntimeConfig(device="cpu", workers=1,
                                                                                overwrite=True))
    said = [str(w.message) for w in seen if issubclass(w.category, VplWarning)]
    assert any("crop_size 32 there, 48 here" in s and f"through the link to {elsewhere}" in s for s in said), said
    assert (run / "cache").is_symlink() and len(_entries(run)) == 16 == len(list(elsewhere.glob("image/*/*")))
    assert kept[run / "talk2dino.safetensors"] != (run / "talk2dino.safetensors").read_bytes()  # replaced at last
    assert [r["iter"] for r in io.read_log(run / "log.jsonl")] == [1, 2, 3, 4]  # this run's lines, once each


def test_overwrite_builds_beside_from_the_last_run_s_cache_and_a_failure_keeps_the_last_run_whole(world, tmp_path,
                                                                                                  monkeypatch):
    """``--overwrite`` builds the new run in the folder's place while the last one waits beside it
    (:func:`vpltool.io.beside.built_beside`): the new run starts from hard links of the last one's feature cache (no
    frozen feature computed again), and a run that fails (a stop before the end, as a NaN or a kill would) leaves the
    last run byte for byte, its cache included."""
    from vpltool.io.beside import aside_path

    run = tmp_path / "run"
    _train(world, run, epochs=1)

    def files() -> dict[str, bytes]:
        return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}

    last = files()
    assert len(_entries(run)) == 16
    counting = _Counting(monkeypatch)
    run_train_text(world, run, _cfg(epochs=1), RuntimeConfig(device="cpu", workers=1, overwrite=True), stop_after=3)
    assert files() == last and not aside_path(run).exists()
    assert counting.rows == 0  # its three iterations read the carried cache
    run_train_text(world, run, _cfg(epochs=1, seed=1), RuntimeConfig(device="cpu", workers=1, overwrite=True))
    assert counting.rows == 0 and len(_entries(run)) == 16 and not aside_path(run).exists()
    assert files()["talk2dino.safetensors"] != last["talk2dino.safetensors"]  # the new run's, once it finished
    assert json.loads((run / "_stage.json").read_text())["params"]["seed"] == 1
