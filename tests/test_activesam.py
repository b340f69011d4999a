"""SAM 3 as open-vocabulary segmentation (``--dense sam3``, ActiveSAM's ``FrozenSAM3Segmentor`` protocol) and
ActiveSAM (``--dense activesam``): the pure parts on hand-checked cases (the lexical canonicalisation, WordNet's
hypernyms from a small WordNet in nltk's format, the context bank, the preview's pruning, the bucket schedule, the
class collapse and both background rules), the presets, and the command line. Their exactness against the
reference's own code is parity/activesam_parity.py's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "parity")]

from vpltool.errors import VplError  # noqa: E402
from vpltool.models.dense.activesam import calibration, context, pruning, vocabulary  # noqa: E402


@pytest.fixture(scope="module")
def wordnet_data(tmp_path_factory):
    """The tests' WordNet (parity/wordnet_fixture.py) as nltk reads it: NLTK_DATA pointing at it."""
    pytest.importorskip("nltk")
    import wordnet_fixture

    root = tmp_path_factory.mktemp("nltk_data")
    wordnet_fixture.write(root)
    return root


def _fresh_wordnet(monkeypatch, root):
    """nltk's ``wordnet`` loader made anew (a loaded one keeps its reader) over ``root`` alone."""
    import nltk
    from nltk.corpus.reader import WordNetCorpusReader
    from nltk.corpus.util import LazyCorpusLoader

    monkeypatch.setattr(nltk.data, "path", [str(root)])
    vocabulary.wordnet.cache_clear()
    loader = LazyCorpusLoader("wordnet", WordNetCorpusReader, None)
    monkeypatch.setattr("nltk.corpus.wordnet", loader)
    return loader


def test_canonical_names():
    assert vocabulary.canonical("aeroplane") == "airplane"
    assert vocabulary.canonical("Traffic-Light") == "traffic light"
    assert vocabulary.canonical("tvmonitor") == "tv monitor"
    assert vocabulary.canonical("wallbrick") == "brick wall"
    assert vocabulary.canonical("wallbrick", universal=False) == "wallbrick"
    assert vocabulary.canonical("mouse") == "computer mouse"
    assert vocabulary.canonical("Cat") == "Cat"  # any other name unchanged, case too


def test_hypernyms_from_a_small_wordnet(wordnet_data, monkeypatch):
    wn = _fresh_wordnet(monkeypatch, wordnet_data)
    assert vocabulary.hypernyms("dog", 2, wn) == ["canine", "domestic animal"]
    assert vocabulary.hypernyms("dog", 1, wn) == ["canine"]
    assert vocabulary.hypernyms("horse", 2, wn) == ["equine", "odd-toed ungulate"]  # by synset name
    assert vocabulary.hypernyms(vocabulary.canonical("aeroplane"), 2, wn) == ["heavier-than-air craft"]
    assert vocabulary.hypernyms("sheep", 2, wn) == []  # not in this WordNet
    assert vocabulary.hypernyms("potted plant", 2, wn) == []


def test_wordnet_missing_is_one_line(tmp_path, monkeypatch):
    """Offline without WordNet's data (or without nltk): one line naming the fix, never a silent empty bank."""
    pytest.importorskip("nltk")
    _fresh_wordnet(monkeypatch, tmp_path)  # an nltk_data folder without corpora/wordnet
    with pytest.raises(VplError) as e:
        vocabulary.wordnet()
    assert "\n" not in str(e.value) and "nltk.downloader wordnet" in str(e.value) and "--hypernym-tokens 0" in str(
        e.value)
    vocabulary.wordnet.cache_clear()
    monkeypatch.setitem(sys.modules, "nltk.corpus", None)  # nltk not installed
    with pytest.raises(VplError, match="nltk, which is not installed: install nltk"):
        vocabulary.wordnet()
    vocabulary.wordnet.cache_clear()


def test_pooled_embeddings_and_neighbor_tokens():
    torch.manual_seed(0)
    embeds = torch.randn(3, 5, 8)
    pad = torch.tensor([[False, False, True, True, True], [False] * 5, [False, True, True, True, True]])
    pooled = context.pooled_embeddings(embeds, pad)
    assert torch.allclose(pooled[0], embeds[0, :2].mean(0)) and torch.allclose(pooled[2], embeds[2, 0])
    resizer = torch.nn.Linear(8, 4)
    tokens = context.neighbor_tokens(pooled, resizer, 2)
    unit = torch.nn.functional.normalize(pooled, dim=-1)
    for i in range(3):
        others = [j for j in range(3) if j != i]
        cos = torch.stack([unit[i] @ unit[j] for j in others])
        order = cos.argsort(descending=True)
        w = cos[order].softmax(0)
        want = resizer(torch.stack([pooled[others[k]] * w[n] for n, k in enumerate(order.tolist())]))
        assert torch.allclose(tokens[i], want, atol=1e-6)
    # more slots than other words (the reference's topk fails past Q): the slots past them weigh 0, as the word's
    # own slot at cosine -inf does where the reference runs; a lone word's are all the resizer's image of zero
    wide = context.neighbor_tokens(pooled, resizer, 4)
    assert wide.shape == (3, 4, 4) and torch.allclose(wide[:, :2], tokens)
    assert torch.allclose(wide[:, 2:], resizer(torch.zeros(8)).expand(3, 2, 4))
    lone = context.neighbor_tokens(pooled[:1], resizer, 2)
    assert torch.allclose(lone, resizer(torch.zeros(8)).expand(1, 2, 4))


def test_context_bank_tokens_and_padding():
    torch.manual_seed(1)
    table = {w: torch.randn(6) for w in ["a", "b", "c", "x", "y"]}
    resizer = torch.nn.Linear(6, 3)
    hyp = {"a": ["x", "y"], "b": ["y"], "c": []}
    bank = context.context_bank(["a", "b", "c"], lambda ws: torch.stack([table[w] for w in ws]), resizer, 1, 2,
                                lambda w, n: hyp[w][:n])
    tokens, pad = bank.tokens([2, 0])  # a bucket of words c, a
    assert tokens.shape == (3, 2, 3) and pad.tolist() == [[False, True, True], [False, False, False]]
    assert torch.equal(tokens[1:, 0], torch.zeros(2, 3))  # c has no hypernym: zeros, not attended
    assert torch.allclose(tokens[1, 1], resizer(table["x"]), atol=1e-6)
    assert torch.allclose(tokens[2, 1], resizer(table["y"]), atol=1e-6)
    none = context.context_bank(["a"], lambda ws: torch.stack([table[w] for w in ws]), resizer, 0, 2,
                                lambda w, n: [])
    assert none.tokens([0]) is None


def test_pruning_and_buckets():
    assert pruning.buckets(70, 32) == [list(range(32)), list(range(32, 64)), list(range(64, 70))]
    assert pruning.needs_preview(41, 40) and not pruning.needs_preview(40, 40)
    scores = torch.tensor([0.1, 0.9, 0.5, 0.2, 0.8, 0.3, 0.05, 0.7, 0.6, 0.4])
    # the 0.8 quantile of these ten (linear interpolation): 0.72; kept: 0.9 and 0.8
    assert pruning.active_words(scores, 0.2, 40) == [1, 4]
    assert pruning.active_words(scores, 0.5, 3) == [1, 4, 7]  # 5 at or above the median, the 3 highest kept
    assert pruning.active_words(torch.zeros(5), 0.2, 40) == [0, 1, 2, 3, 4]  # all tie at the quantile


def test_class_collapse_and_threshold_rule():
    scores = torch.tensor([[[0.2, 0.1]], [[0.6, 0.05]], [[0.3, 0.35]]])  # 3 words, 1x2 pixels
    query_class = torch.tensor([0, 1, 1])  # words 1 and 2 are aliases of class 1
    probs = calibration.class_scores(scores, query_class, 2)
    assert torch.allclose(probs, torch.tensor([[[0.2, 0.1]], [[0.6, 0.35]]]))
    assert calibration.threshold_background(probs, 0.4).tolist() == [[1, 0]]
    assert calibration.threshold_background(probs, 0.0).tolist() == [[1, 1]]


def test_mabc():
    # pixel 1: s1 0.9, s2 0.1 -> 0.9 sqrt(0.8) = 0.805; pixel 2: s1 0.6, s2 0.55 -> 0.134; pixel 3: s1 0.5, s2 0.0
    probs = torch.tensor([[[0.9, 0.55, 0.0]], [[0.1, 0.6, 0.5]], [[0.0, 0.0, 0.0]]])
    labels = calibration.mabc_labels(probs.clone(), 0.4, 1.25)  # T = 0.4 ** 1.25 = 0.318
    assert labels.tolist() == [[0, 0, 1]]  # pixel 1: class 0 kept (it is the argmax); pixel 2: background
    assert calibration.mabc_labels(probs, 0.0, 1.25).tolist() == [[0, 1, 1]]  # off
    assert calibration.mabc_labels(probs, 0.4, 1.25, background=2).tolist() == [[0, 2, 1]]


def test_presets_are_its_configs():
    from vpltool.config.benchmarks import BENCHMARK_PRESETS

    act, sam3 = BENCHMARK_PRESETS["activesam"], BENCHMARK_PRESETS["sam3"]
    assert set(act.names) == set(sam3.names) == {"voc21", "context60", "coco-object", "voc20", "context59",
                                                  "coco-stuff", "cityscapes", "ade20k"}
    assert act.settings("voc21")["prob_threshold"] == 0.4 and act.settings("context60")["prob_threshold"] == 0.1
    assert act.settings("ade20k")["prob_threshold"] == 0.0 and act.settings("ade20k")["max_active"] == 40
    assert act.settings("voc21")["confidence_threshold"] == 0.3
    assert sam3.settings("voc21")["confidence_threshold"] == 0.5 and sam3.settings("voc21")["sam3_heads"] == "instance"
    for bench in act.names:
        kind, name = act.settings(bench)["class_file"].split(":")
        assert (ROOT / "vpltool" / "assets" / "class_files" / kind / f"{name}.txt").is_file()


def test_segment_help_lists_both_and_bad_knobs():
    from typer.testing import CliRunner

    from vpltool.cli import app
    from vpltool.config import SegmentConfig

    text = " ".join(CliRunner().invoke(app, ["segment", "--help"]).output.split())
    for word in ("sam3", "activesam", "--sam3-weights", "--max-active", "--mabc-exponent", "--sam3-heads"):
        assert word in text, word
    with pytest.raises(VplError, match="--sam3-heads 'mask': give one of instance, semantic, both"):
        SegmentConfig.of("sam3", sam3_heads="mask")
    with pytest.raises(VplError, match="--quantile-alpha 2.0: must be in"):
        SegmentConfig.of("activesam", quantile_alpha=2.0)


def _grounding(k: int, queries: int, side: int, seed: int):
    """A seeded random ``Sam3Grounding`` of ``k`` prompts with both heads' low-resolution logits."""
    from vpltool.models.backbones.sam3 import Sam3Grounding

    g = torch.Generator().manual_seed(seed)
    return Sam3Grounding(torch.randn(k, queries, generator=g), torch.randn(k, generator=g),
                         torch.rand(k, queries, 4, generator=g), torch.randn(k, queries, side, side, generator=g),
                         torch.randn(k, 1, side, side, generator=g))


def test_grounding_scores_fold_the_concepts_instances():
    """The scores are the family's ``Sam3.concepts`` folded (each kept mask times its score, the pixelwise max;
    the semantic map; their max; times the presence) with the masks resized a few at a time: the same to float32's
    last bits (the bilinear kernel's rounding may move with where a plane lies in its batch)."""
    from vpltool.models.backbones.sam3 import Sam3
    from vpltool.models.dense.sam3 import Sam3Settings, grounding_scores

    g, size = _grounding(3, 40, 8, 2), (21, 34)
    for threshold in (0.0, 0.3, 2.0):  # every query kept, some, none
        concepts = Sam3.concepts(None, g, size, threshold)
        for heads, gate in (("instance", False), ("semantic", False), ("both", True)):
            want = []
            for c in concepts:
                inst = torch.zeros(size)
                for mask, score in zip(c.masks, c.scores):
                    inst = torch.maximum(inst, mask * score)
                score = {"instance": inst, "semantic": c.semantic, "both": torch.maximum(inst, c.semantic)}[heads]
                want.append(score * c.presence if gate else score)
            got = grounding_scores(g, size, Sam3Settings(threshold, heads, gate), chunk=7)
            torch.testing.assert_close(got, torch.stack(want), rtol=0, atol=1e-6, msg=str((threshold, heads)))
    assert grounding_scores(g, size, Sam3Settings(2.0, "instance", False)).abs().max() == 0


class _LiveBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """The bytes of the tensors made under it that are alive, and their peak (each storage counted once, until
    the tensor that made it is collected)."""

    def __init__(self):
        super().__init__()
        self.live, self.peak, self.seen = 0, 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        import weakref

        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.seen:
                key, n = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
                self.seen.add(key)
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, key, n)
        return out

    def _free(self, key, n):
        self.seen.discard(key)
        self.live -= n


def test_grounding_scores_memory_does_not_grow_with_the_instances_kept():
    """A low --confidence-threshold keeps every query of every prompt: the peak of the tensors made at the photo's
    size is the same whether 63, 100 or all of the 400 instances are kept (the masks are resized a chunk at a time),
    a few chunks' maps at the photo's size, where every kept mask at once would be 200 a prompt."""
    from vpltool.models.dense.sam3 import MASK_CHUNK, Sam3Settings, grounding_scores

    g, size = _grounding(2, 200, 8, 3), (300, 200)
    scores = g.scores().flatten().sort().values
    peaks = {}
    for threshold in (0.0, float(scores[299]), float(scores[-4 * MASK_CHUNK])):  # 400, 100, 2 x 32 - 1 kept
        kept = int((g.scores() > threshold).sum())
        with _LiveBytes() as live:
            grounding_scores(g, size, Sam3Settings(threshold, "both", True))
        peaks[kept] = live.peak
    assert sorted(peaks) == [4 * MASK_CHUNK - 1, 100, 400]
    one_map, low = size[0] * size[1] * 4, 8 * 8 * 4  # bytes: a map at the photo's size, a low-resolution mask
    assert 0 <= peaks[400] - peaks[4 * MASK_CHUNK - 1] <= 400 * low  # the low-resolution masks picked, alone
    assert peaks[400] <= (4 * MASK_CHUNK + 2 + 2) * one_map  # the chunk's resize, sigmoid and product; K + 2 maps
    assert peaks[400] < 200 * one_map / 2


@pytest.fixture(scope="module")
def tiny_sam3(tmp_path_factory):
    """The sam3 family's tiny seeded random SAM 3 (Hugging Face's layout: 112 px, windows of 4)."""
    from vpltool.models.backbones.sam3_files import write_tiny

    return write_tiny(tmp_path_factory.mktemp("sam3") / "hf", "hf")


def test_activesam_flow_preview_buckets_and_context(tiny_sam3, wordnet_data, monkeypatch):
    """The four parts in order on the tiny SAM 3: the bank's tokens, the preview at its side with the head skipped
    and every word, the kept words decoded in buckets at SAM 3's side with 2 + 2 context tokens each."""
    from vpltool.models import load_model
    from vpltool.models.backbones.sam3 import Sam3Spec
    from vpltool.models.dense import activesam

    _fresh_wordnet(monkeypatch, wordnet_data)
    sam = load_model("sam3", Sam3Spec(str(tiny_sam3)), "cpu")
    calls, ground = [], sam.ground

    def spy(image, text, index=None, masks=True, geometry_token=True):
        calls.append((image.size, int(text.features.shape[0]), int(text.features.shape[1]), masks))
        return ground(image, text, index, masks, geometry_token)

    monkeypatch.setattr(sam, "ground", spy)
    words = ["background", "aeroplane", "cat", "dog", "person", "sheep", "bus"]
    s = activesam.ActiveSamSettings()
    s.max_active, s.bucket_size, s.preview_resolution = 3, 2, 56
    bank = activesam.build_bank(sam, words, s)
    assert bank.has_hypernym.sum(1).tolist() == [0, 1, 1, 2, 2, 0, 1]  # aeroplane read as airplane
    text = sam.encode_text([vocabulary.canonical(w) for w in words])
    photo = torch.randint(0, 255, (20, 30, 3), dtype=torch.uint8)
    scores, active, presence = activesam.activesam_scores(sam, photo, text, (20, 30), s, bank)
    assert [c for c in calls if c[0] == 56] == [(56, 2, 32, False)] * 3 + [(56, 1, 32, False)]
    assert 1 <= len(active) <= 3 and active == pruning.active_words(presence, 0.2, 3)
    full = [c for c in calls if c[0] == sam.image_size]
    assert full == [(sam.image_size, len(b), 32 + 4, True) for b in pruning.buckets(len(active), 2)]
    dropped = [i for i in range(len(words)) if i not in active]
    assert scores[dropped].abs().max() == 0 and scores.shape == (7, 20, 30)


@pytest.mark.parametrize("method", ["sam3", "activesam"])
def test_the_image_is_encoded_once_per_photo_whatever_the_number_of_classes(tiny_sam3, method, monkeypatch):
    """Through `segment`'s hooks on the tiny SAM 3: with 1, 21 or 150 class words, SAM 3's image encoder runs once
    per photo at its own side (and ActiveSAM's preview once more, at its side, when the words outnumber
    --max-active), the text once per vocabulary, and the prompts go through the decoder in buckets."""
    import math

    from vpltool.config import SegmentConfig
    from vpltool.models.backbones.sam3 import Sam3
    from vpltool.models.dense.method import resolve_method
    from vpltool.models.dense.sam3 import bucket

    knobs = {"hypernym_tokens": 0, "preview_resolution": 56, "bucket_size": 16} if method == "activesam" else {}
    dense = resolve_method(SegmentConfig.of(method, sam3_weights=str(tiny_sam3), **knobs))
    bb = dense.load(None, "cpu")
    calls = {"encode_image": [], "encode_text": [], "ground": []}
    for name in calls:
        real = getattr(Sam3, name)

        def spy(self, *args, _real=real, _name=name, **kwargs):
            calls[_name].append(args[0].shape[-1] if _name == "encode_image" else 0)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(Sam3, name, spy)
    photos = [torch.randint(0, 255, (20, 30, 3), dtype=torch.uint8), torch.randint(0, 255, (24, 18, 3),
                                                                                      dtype=torch.uint8)]
    side, max_active = bb.sam.image_size, 40
    for n in (1, 21, 150):
        for v in calls.values():
            v.clear()
        text = dense.hooks.query_text(bb, [f"thing {i}" for i in range(n)], ["{}"])
        for photo in photos:
            extras = [dense.hooks.extra_inputs(None, photo.numpy())]
            scores = dense.hooks.dense_logits(bb, None, text, [tuple(photo.shape[:2])], dense.settings, extras)[0]
            assert scores.shape == (n, *photo.shape[:2])
        assert calls["encode_image"].count(side) == len(photos), (n, calls["encode_image"])
        previews = [s for s in calls["encode_image"] if s != side]
        assert previews == ([56] * len(photos) if method == "activesam" and n > max_active else []), n
        if method == "sam3":
            assert len(calls["ground"]) == len(photos) * math.ceil(n / bucket(bb.sam))
            assert len(calls["encode_text"]) <= 1  # once per vocabulary (the words of a run)


@pytest.mark.parametrize("method", ["sam3", "activesam"])
def test_embed_then_class_lists_equal_fresh_calls_without_encoding_again(tiny_sam3, method, monkeypatch):
    """The Python door: ``seg.embed(photo)`` encodes the photo (ActiveSAM: at its preview's side too), then any class
    list runs the prompts alone, giving a fresh call's scores and labels exactly."""
    import numpy as np

    import vpltool
    from vpltool.models.backbones.sam3 import Sam3

    knobs = dict(hypernym_tokens=0, preview_resolution=56, max_active=2) if method == "activesam" else {}
    seg = vpltool.segmenter(method, sam3_weights=str(tiny_sam3), device="cpu", prob_threshold=0.0, **knobs)
    photo = np.random.default_rng(0).integers(0, 256, (30, 44, 3), dtype=np.uint8)
    emb = seg.embed(photo)
    sides = sorted(a[0].shape[-1] for _, _, a, _ in emb.kept)
    assert sides == ([56, seg.backbone.sam.image_size] if method == "activesam" else [seg.backbone.sam.image_size])
    lists = [["cat", "dog"], ["sofa", "sky", "traffic light", "bus"]]  # ActiveSAM's second list is pruned (> 2)
    encodes, real = [], Sam3.encode_image
    monkeypatch.setattr(Sam3, "encode_image", lambda self, *a, **k: encodes.append(1) or real(self, *a, **k))
    kept = [seg(emb, names) for names in lists]
    assert encodes == []  # the kept encodings answered every call
    fresh = [seg(photo, names) for names in lists]
    assert len(encodes) == (3 if method == "activesam" else 2)
    for a, b in zip(kept, fresh):
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.scores, b.scores) and a.classes == b.classes


def _cli(*args, env=None):
    from typer.testing import CliRunner

    from vpltool.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env=env)


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    from vpltool.demo.make_world import write_dataset

    return write_dataset(tmp_path_factory.mktemp("world"), n_train=2, n_val=1, seed=0)


def test_segment_end_to_end_resume_and_bad_input(tiny_sam3, small_world, wordnet_data, tmp_path, monkeypatch):
    """Both methods through `segment` on the demo world with the tiny random SAM 3 (its masks mean nothing; the
    run is real): masks at each scene's size, a rerun resumes, and bad input is one line before any model loads."""
    import numpy as np
    from PIL import Image

    from vpltool import io

    common = ["--sam3-weights", tiny_sam3, "--device", "cpu", "--workers", "0", "--prob-threshold", "0"]
    r = _cli("segment", small_world, "--dense", "sam3", "-o", tmp_path / "s3", *common)
    assert r.exit_code == 0, r.output
    masks = sorted((tmp_path / "s3").glob("*.png"))
    assert len(masks) == 3 and all(np.asarray(Image.open(m)).shape == (96, 96) for m in masks)
    assert np.asarray(Image.open(masks[0])).max() <= 8
    assert io.read_stage_record(tmp_path / "s3", "segment")["params"]["sam3_heads"] is None
    r = _cli("segment", small_world, "--dense", "sam3", "-o", tmp_path / "s3", *common)
    assert r.exit_code == 0 and "3 already done" in r.output, r.output
    _fresh_wordnet(monkeypatch, wordnet_data)
    r = _cli("segment", small_world, "--dense", "activesam", "-o", tmp_path / "act", *common,
             "--preview-resolution", "56", "--max-active", "4", "--bucket-size", "3")
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "act").glob("*.png"))) == 3
    # bad input: no weights; another model's file; WordNet missing (each one line, exit 2, nothing written)
    r = _cli("segment", small_world, "--dense", "sam3", "-o", tmp_path / "bad")
    assert r.exit_code == 2 and "--sam3-weights" in r.output and not (tmp_path / "bad").exists(), r.output
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    r = _cli("segment", small_world, "--dense", "sam3", "-o", tmp_path / "bad", "--sam3-weights", other)
    assert r.exit_code == 2 and str(other.name) in r.output and not (tmp_path / "bad").exists(), r.output
    _fresh_wordnet(monkeypatch, tmp_path)
    r = _cli("segment", small_world, "--dense", "activesam", "-o", tmp_path / "bad", *common)
    assert r.exit_code == 2 and "nltk.downloader wordnet" in r.output and not (tmp_path / "bad").exists()


def test_ground_runs_the_heads_of_prompts_with_a_kept_query_alone(tiny_sam3):
    """The family's ``ground(..., masks=score)``, which the SAM 3 row uses: the heads of the prompts with a query
    above the score, the same rows as the whole heads give."""
    from vpltool.models import load_model
    from vpltool.models.backbones.sam3 import Sam3Spec

    sam = load_model("sam3", Sam3Spec(str(tiny_sam3)), "cpu")
    image = sam.encode_image(sam.prepare(torch.randint(0, 255, (40, 50, 3), dtype=torch.uint8)))
    text = sam.encode_text(["cat", "dog", "sofa", "sky"])
    whole = sam.ground(image, text)
    scores = whole.scores()
    cut = float(scores.max(1).values.median())  # about half the prompts keep a query
    part = sam.ground(image, text, masks=cut)
    rows = [k for k in range(4) if bool((scores[k] > cut).any())]
    assert part.mask_prompts == rows and 0 < len(rows) < 4
    assert torch.allclose(part.pred_masks, whole.pred_masks[rows], atol=1e-5)
    assert torch.allclose(part.semantic_seg, whole.semantic_seg[rows], atol=1e-5)
    none = sam.ground(image, text, masks=1.0)
    assert none.mask_prompts == [] and none.pred_masks is None


def test_the_preview_encodes_the_coarsest_level_alone_and_its_presence_is_the_same(tiny_sam3, monkeypatch):
    """``encode_image(finer=False)`` (ActiveSAM's preview) runs the neck's coarsest layer alone: its level and
    positions are the full encoding's last, bit for bit, so the presence and scores ``ground(masks=False)`` reads
    are the same; asking that image for the segmentation head is one line."""
    from vpltool.models import load_model
    from vpltool.models.backbones.sam3 import Sam3Spec

    sam = load_model("sam3", Sam3Spec(str(tiny_sam3)), "cpu")
    pixels = sam.prepare(torch.randint(0, 255, (40, 50, 3), dtype=torch.uint8), 56)
    ran = []
    for i, layer in enumerate(sam.model.vision_encoder.neck.fpn_layers):
        monkeypatch.setattr(layer, "forward", lambda x, _i=i, _f=layer.forward: ran.append(_i) or _f(x))
    whole, coarse = sam.encode_image(pixels), sam.encode_image(pixels, finer=False)
    layers = len(sam.model.vision_encoder.neck.fpn_layers)
    assert ran == [*range(layers), layers - 2] and len(whole.features) == 3 and len(coarse.features) == 1
    assert torch.equal(coarse.features[0], whole.features[-1]) and torch.equal(coarse.positions[0], whole.positions[-1])
    text = sam.encode_text(["cat", "dog"])
    a, b = sam.ground(whole, text, masks=False), sam.ground(coarse, text, masks=False)
    assert torch.equal(a.presence_logits, b.presence_logits) and torch.equal(a.pred_logits, b.pred_logits)
    with pytest.raises(ValueError, match="finer levels"):
        sam.ground(coarse, text)


def test_the_encoders_first_self_attention_is_shared_by_the_prompts_of_one_image(tiny_sam3):
    """``ground`` on one image computes the DETR encoder's first self-attention (the image alone, no prompt yet)
    once, for every prompt and bucket after it: the same outputs as transformers' encoder run on each prompt's own
    copy of the image (a batch of copies, one per prompt, which shares nothing)."""
    from vpltool.models import load_model
    from vpltool.models.backbones.sam3 import Sam3Spec
    from vpltool.models.backbones.sam3_states import Sam3Image

    sam = load_model("sam3", Sam3Spec(str(tiny_sam3)), "cpu")
    image = sam.encode_image(sam.prepare(torch.randint(0, 255, (40, 50, 3), dtype=torch.uint8)))
    text = sam.encode_text(["cat", "dog", "sofa"])
    calls, attention = [], sam.model.detr_encoder.layers[0].self_attn
    hook = attention.register_forward_hook(lambda m, a, kw, out: calls.append(kw["query"].shape[0]), with_kwargs=True)
    try:
        first = sam.ground(image, text.select([0]))
        rest = sam.ground(image, text.select([1, 2]))
    finally:
        hook.remove()
    assert calls == [1] and len(image.attended) == 1  # once, on one row, for the three prompts
    copies = Sam3Image(tuple(f.expand(3, -1, -1, -1) for f in image.features),
                       tuple(p.expand(3, -1, -1, -1) for p in image.positions), image.size)
    own = sam.ground(copies, text)
    assert not copies.attended
    for name in ("pred_logits", "presence_logits", "pred_boxes", "pred_masks", "semantic_seg"):
        shared = torch.cat([getattr(first, name), getattr(rest, name)])
        assert torch.allclose(shared, getattr(own, name), atol=1e-5), name


def test_install_lines_work_from_a_clone(monkeypatch):
    """vpltool is not on the package index: every extra's line installs from the checkout (errors.install_extra)."""
    from vpltool.errors import install_extra
    from vpltool.models.backbones import sam3

    assert install_extra("sam3", "activesam") == "pip install -e '.[sam3,activesam]' in vpltool's checkout"
    assert install_extra("activesam") in vocabulary.WORDNET_FIX and "vpltool[" not in vocabulary.WORDNET_FIX
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(VplError) as e:
        sam3.import_transformers()
    assert str(e.value).endswith(install_extra("sam3"))


def test_activesam_defaults_are_defined_once():
    """--help, the benchmark presets and the settings all read config.dense_knobs.ACTIVESAM_DEFAULTS, which is
    configs/base_config.py's model dict (bucket_size 32, not SAM 3's 8)."""
    from typer.testing import CliRunner

    from vpltool.cli import app
    from vpltool.config.benchmarks import BENCHMARK_PRESETS
    from vpltool.config.dense_knobs import ACTIVESAM_DEFAULTS
    from vpltool.models.dense.activesam import ActiveSamSettings

    assert ACTIVESAM_DEFAULTS["bucket_size"] == 32 and ACTIVESAM_DEFAULTS["max_active"] == 40
    assert vars(ActiveSamSettings()) == ACTIVESAM_DEFAULTS
    for bench in BENCHMARK_PRESETS["activesam"].names:
        preset = BENCHMARK_PRESETS["activesam"].settings(bench)
        assert {k: preset[k] for k in ACTIVESAM_DEFAULTS} == ACTIVESAM_DEFAULTS
    text = " ".join(CliRunner().invoke(app, ["segment", "--help"], terminal_width=200).output.split())
    assert f"(its bucket_size) [default: {ACTIVESAM_DEFAULTS['bucket_size']}, base_config.py]" in text


def test_preview_resolution_off_the_patch_is_refused_before_any_model(small_world, tmp_path, monkeypatch):
    from vpltool.config import SegmentConfig

    with pytest.raises(VplError) as e:
        SegmentConfig.of("activesam", preview_resolution=500)
    assert str(e.value) == ("--preview-resolution 500: not a multiple of SAM 3's 14-pixel patch; give 490 or 504")
    monkeypatch.setattr("vpltool.models.registry.load_model", _no_load)
    r = _cli("segment", small_world, "--dense", "activesam", "-o", tmp_path / "bad", "--preview-resolution", "57",
             "--sam3-weights", tmp_path / "absent", "--classes", "star,circle")
    assert r.exit_code == 2 and "--preview-resolution 57" in r.output and "give 56 or 70" in r.output, r.output
    assert not (tmp_path / "bad").exists()


def _no_load(*args, **kwargs):
    raise AssertionError("a model was loaded")


def test_wordnet_missing_is_refused_before_the_model_loads(tiny_sam3, small_world, tmp_path, monkeypatch):
    pytest.importorskip("nltk")
    import vpltool.models.registry as registry

    _fresh_wordnet(monkeypatch, tmp_path)  # no corpora/wordnet there
    monkeypatch.setattr(registry, "load_model", _no_load)
    r = _cli("segment", small_world, "--dense", "activesam", "-o", tmp_path / "bad", "--sam3-weights", tiny_sam3,
             "--classes", "star,circle", "--device", "cpu", "--workers", "0")
    assert r.exit_code == 2 and "nltk finds no WordNet data" in r.output, r.output
    assert "a model was loaded" not in r.output and not (tmp_path / "bad").exists()
    vocabulary.wordnet.cache_clear()


def test_hypernyms_do_not_depend_on_nltks_order():
    """nltk 3.9 returns a sense's hypernyms from a set (its order follows the string hashing); vpltool takes them
    sorted by synset name, so every order gives the same two."""
    import itertools
    from types import SimpleNamespace

    def synset(name):
        lemma = SimpleNamespace(name=lambda: name.split(".")[0])
        return SimpleNamespace(name=lambda: name, lemmas=lambda: [lemma])

    three = [synset("working_dog.n.01"), synset("canine.n.02"), synset("domestic_animal.n.01")]
    seen = set()
    for order in itertools.permutations(three):
        sense = SimpleNamespace(hypernyms=lambda order=order: list(order))
        wn = SimpleNamespace(NOUN="n", synsets=lambda key, pos, sense=sense: [sense])
        seen.add(tuple(vocabulary.hypernyms("dog", 2, wn)))
    assert seen == {("canine", "domestic animal")}


def test_sam3_runs_record_no_clip_and_add_no_background_words(tiny_sam3, small_world, tmp_path):
    """sam3 and activesam load no CLIP: the record names no CLIP model or template, --model / --pretrained /
    --templates warn that they do nothing; with --classes, --background auto prompts no background word, and
    explicit words still are prompts (the reference queries its class file's lines alone)."""
    from vpltool import io

    common = ["--sam3-weights", tiny_sam3, "--device", "cpu", "--workers", "0", "--classes", "star,circle"]
    r = _cli("segment", small_world, "--dense", "sam3", "-o", tmp_path / "a", *common, "--model", "ViT-L-14",
             "--pretrained", "laion2b", "--templates", "clip-es")
    assert r.exit_code == 0, r.output
    for option in ("--model ViT-L-14", "--pretrained laion2b", "--templates clip-es"):
        assert f"warning: {option} has no effect with --dense sam3" in " ".join(r.output.split()), option
    params = io.read_stage_record(tmp_path / "a", "segment")["params"]
    assert not {"model", "template_list", "templates"} & set(params) and params["background_words"] == []
    r = _cli("segment", small_world, "--dense", "sam3", "-o", tmp_path / "b", *common, "--background", "sky,wall")
    assert r.exit_code == 0 and "warning" not in r.output, r.output
    assert io.read_stage_record(tmp_path / "b", "segment")["params"]["background_words"] == ["sky", "wall"]


def test_an_earlier_record_naming_a_clip_is_the_same_run():
    """Records written before SAM 3's methods stopped naming a CLIP resume: those entries are read as absent."""
    from vpltool.config import SegmentConfig
    from vpltool.models.dense import dense_hooks

    for method in ("sam3", "activesam"):
        hooks = dense_hooks(method, SegmentConfig.of(method))
        new = {"dense": method, "background_words": []}
        old = {**new, "model": {"model": "ViT-B-16"}, "template_list": ["a photo of a {}."], "templates": "imagenet"}
        assert hooks.older_record(old, new) == new
        assert hooks.older_record({**old, "dense": "x"}, new) != new
