"""A photo in column bands (vpltool.models.dense.bands) against the whole-photo computation (the unbanded functions of
vpltool.models.dense.segmentor, the reference): upsampling equal bit for bit, PAMR to float rounding, labels equal."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vpltool.config import SegmentConfig
from vpltool.models import load_backbone
from vpltool.models.dense.bands import ColumnUpsampler, band_bytes, logit_bands, whole_bytes
from vpltool.models.dense.segmentor import dense_probabilities, guide_image, pamr, scores_batch, segment_logits


def _whole(src, size, guide, steps):
    up = F.interpolate(src[None], size=size, mode="bilinear", align_corners=False)
    return (pamr(guide_image(guide, size), up, steps) if steps else up)[0]


def _joined(src, size, guide, steps, band):
    parts = list(logit_bands(src, size, guide, steps, (8, 16), band))
    assert [p[0] for p in parts] == list(range(0, size[1], band))  # left to right, no gap
    return torch.cat([p[2] for p in parts], dim=-2).transpose(1, 2)  # the bands are transposed


# (3 channels take another of torch's kernels, one that is not separable: the guide's, equal to float rounding)
@pytest.mark.parametrize("source,size", [((6, 21, 32), (301, 437)), ((4, 336, 448), (337, 1333)),
                                         ((2, 9, 5), (97, 70))])
def test_upsampling_in_bands_is_the_whole_upsampling_bit_for_bit(source, size):
    src = torch.randn(*source, generator=torch.Generator().manual_seed(0))
    whole = F.interpolate(src[None], size=size, mode="bilinear", align_corners=False)[0]
    assert torch.equal(_joined(src, size, None, 0, 16), whole)
    # any columns, in any order, repeats allowed (PAMR's replicated borders)
    index = torch.tensor([size[1] - 1, 0, 0, 3 % size[1]])
    assert torch.equal(ColumnUpsampler(src, size).columns(index), whole[..., index].transpose(1, 2))


@pytest.mark.parametrize("size,steps,band", [((150, 230), 10, 32), ((90, 47), 3, 16), ((64, 400), 10, 400)])
def test_pamr_in_bands_reaches_across_bands(size, steps, band):
    g = torch.Generator().manual_seed(1)
    src, guide = torch.randn(5, 12, 18, generator=g), torch.randn(3, 12, 18, generator=g)
    whole = _whole(src, size, guide, steps)
    got = _joined(src, size, guide, steps, band)
    # the same arithmetic; only torch's vectorised reductions may round the last bit of a pixel differently
    assert (got - whole).abs().max() < 1e-5
    # PAMR moves the logits well beyond that, and across band borders (its reach is 10 x 16 columns)
    assert (whole - _whole(src, size, guide, 0)).abs().max() > 1e-2


@pytest.fixture(scope="module")
def naclip(tiny_spec):
    return load_backbone(tiny_spec, "cpu", dense="naclip")


def _flat_pixels(g):
    """A photo-like input: flat patches, where PAMR's guide has no spread (``1e-8 + 0.1 * std`` divides: a
    rounding difference in the guide would show)."""
    return F.interpolate(torch.randn(1, 3, 6, 10, generator=g), size=(48, 80), mode="nearest")


@pytest.mark.parametrize("dense,threads", [("naclip", 1), ("naclip", 2), ("sclip", 1)])
def test_banded_labels_equal_the_whole_photos(tiny_spec, naclip, dense, threads):
    bb = naclip if dense == "naclip" else load_backbone(tiny_spec, "cpu", dense=dense)
    settings = SegmentConfig(dense=dense).resolved()
    g = torch.Generator().manual_seed(2)
    text = F.normalize(torch.randn(7, bb.embed_dim, generator=g), dim=-1)
    query_class = torch.tensor([1, 1, 2, 3, 0, 0, 0])
    # on one thread torch resizes PAMR's 3-channel guide by a kernel bands cannot follow (a last-bit difference,
    # which flat patches would magnify): random pixels there; on several threads, as the CLI runs, flat patches
    pixels = torch.randn(1, 3, 48, 80, generator=g) if threads == 1 else _flat_pixels(g)
    size = (150, 260)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            reference = segment_logits(bb, pixels, text, settings, [size])[0]  # today's whole-photo code
        want_p, want = dense_probabilities(reference, query_class, 4, settings.logit_scale, settings.prob_threshold,
                                           settings.area_threshold)
        got = {budget: scores_batch(bb, pixels, text, query_class, 4, settings, [size], torch.float32,
                                    budget=budget)[0] for budget in (0, 2**40)}  # forced into bands; whole
        lean = scores_batch(bb, pixels, text, query_class, 4, settings, [size], torch.float32, scores=False,
                            budget=0)[0]
    finally:
        torch.set_num_threads(before)
    for budget, (probs, labels) in got.items():
        assert torch.equal(labels, want)
        assert (probs - want_p).abs().max() < (1e-5 if threads == 1 else 1e-7)  # 2 threads: the last bits
        if budget:
            assert torch.equal(probs, want_p)  # the whole photo: today's code, bit for bit
    assert len(want.unique()) > 1
    assert lean[0] is None and torch.equal(lean[1], want)


def test_the_bands_hold_no_photo_sized_tensor():
    # 24 MP with 27 queries and PAMR: the whole computation would need about 30 GB, the bands well under 1 GB
    assert whole_bytes(27, 4000, 6000, 10) > 25 * 2**30
    assert band_bytes(27, 4000, 10, (8, 16)) < 2**30
    assert band_bytes(27, 4000, 10, (8, 16)) == band_bytes(27, 4000, 10, (8, 16))  # no width in it


def test_a_photo_too_large_for_the_free_memory_is_refused_in_one_line():
    from vpltool.errors import VplError
    from vpltool.models.dense.bands import check_photo_memory, photo_bytes

    settings = SegmentConfig().resolved()
    need = photo_bytes(4000, 6000, 27, settings)
    assert 2**30 < need < 3 * 2**30  # the photo, its labels and the bands: the 24 MP bar with room for the model
    check_photo_memory(["p.jpg"], [(4000, 6000)], 27, settings, available=need)
    with pytest.raises(VplError, match=r"p.jpg: a 6000x4000 photo \(24 megapixels\) needs about 1.5 GB .* free "
                                       "memory, or segment a copy"):
        check_photo_memory(["p.jpg"], [(4000, 6000)], 27, settings, available=need - 1)


def test_the_refusal_names_the_largest_max_side_that_fits():
    from dataclasses import replace

    from vpltool.errors import VplError
    from vpltool.models.dense.bands import check_photo_memory, photo_bytes

    settings = SegmentConfig().resolved()
    with pytest.raises(VplError, match=r"1.0 GB are free; pass --max-side 3136 \(the photo is segmented at that long "
                                       r"side and its mask enlarged to the photo\), or free memory$"):
        check_photo_memory(["p.jpg"], [(4000, 6000)], 27, settings, available=2**30, max_side_option="--max-side {}")
    assert photo_bytes(4000, 6000, 27, replace(settings, max_side=3136)) <= 2**30  # the side named fits,
    assert photo_bytes(4000, 6000, 27, replace(settings, max_side=3200)) > 2**30  # the next one does not
    # the photo and its labels alone over the free memory: no working size helps, and none is named
    with pytest.raises(VplError, match="GB are free; free memory, or segment a copy"):
        check_photo_memory(["p.jpg"], [(4000, 6000)], 27, settings, available=2**27, max_side_option="--max-side {}")


def test_max_side_segments_a_larger_photo_at_its_working_size_and_enlarges_the_labels(naclip):
    from dataclasses import replace

    from vpltool.models.dense.bands import enlarge, photo_bytes, working_size
    from vpltool.models.dense.segmentor import settings_params

    settings = SegmentConfig(dense="naclip").resolved()
    g = torch.Generator().manual_seed(4)
    text = F.normalize(torch.randn(5, naclip.embed_dim, generator=g), dim=-1)
    query_class, pixels = torch.tensor([1, 2, 3, 0, 0]), torch.randn(1, 3, 48, 80, generator=g)

    def run(s, size):
        return scores_batch(naclip, pixels, text, query_class, 4, s, [size], torch.float32)[0]

    with torch.no_grad():
        own_probs, own = run(settings, (150, 260))
        small_probs, small = run(settings, (75, 130))
        probs, labels = run(replace(settings, max_side=130), (150, 260))
        unmoved = run(replace(settings, max_side=260), (150, 260))[1]  # the long side is not above it: off
    assert working_size(150, 260, 130) == (75, 130) and working_size(150, 260, 0) == (150, 260)
    assert labels.shape == (150, 260) and torch.equal(labels, enlarge(small, (150, 260)))
    assert torch.equal(probs, enlarge(small_probs, (150, 260))) and torch.equal(unmoved, own)
    assert not torch.equal(labels, own) and len(labels.unique()) > 1  # other labels: a smaller working size
    # nearest as torch picks it, for labels and probabilities alike
    x = torch.rand(2, 7, 11, generator=g)
    assert torch.equal(enlarge(x, (30, 17)), F.interpolate(x[None], size=(30, 17), mode="nearest")[0])
    # the memory it needs goes with the working size; the recorded settings hold it only when it is set
    assert photo_bytes(4000, 6000, 27, replace(settings, max_side=2048)) < 0.6 * photo_bytes(4000, 6000, 27, settings)
    assert "max_side" not in settings_params(settings)
    assert settings_params(replace(settings, max_side=2048))["max_side"] == 2048
    # so the resize's long side: recorded only when it is not mmseg's 2048 (older runs resume)
    assert "long_side" not in settings_params(settings) and settings.long_side == 2048
    assert settings_params(SegmentConfig(dense="naclip", long_side=1008).resolved())["long_side"] == 1008


def test_text_family_labels_in_bands_equal_the_whole_upsampling(tiny_pgseg_checkpoint, monkeypatch):
    """`segment --model pgseg:FILE` above the budget: its labels upsampled and reduced in column bands equal the
    whole photo's (every budget forced to 0 here; a photo wider than one band, not a multiple of it)."""
    import numpy as np
    import torch

    from vpltool.stages import segment_text as st

    fam = st.text_family_of("pgseg")
    model = fam.load_model(tiny_pgseg_checkpoint, "cpu")
    text = st.text_queries(fam, model, ["circle", "star"], ["grass", "sky"], "cpu")
    image = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    args = (fam, model, image, text, 99, 0.0, 64, (0, 0), "cpu")  # every query kept apart (none read as background)
    whole = st.image_scores(*args)[1]
    monkeypatch.setattr(st, "WHOLE_BUDGET", 0)
    banded = st.image_labels(*args)
    assert banded.shape == whole.shape == (150, 200) and banded.dtype == torch.int64
    assert torch.equal(banded, whole)  # the random tiny model's map is one label: logits with many follow
    small = torch.randn(1, 6, 19, 23, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(st, "_model_logits", lambda *a: small)
    whole, banded = st.image_scores(*args)[1], st.image_labels(*args)
    assert torch.equal(banded, whole) and len(whole.unique()) == 6


_HEAP_PROBE = """
import sys, torch
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
if sys.argv[1] == "keep":
    from vpltool.runtime.heap import KEEP_FREED, keep_freed_memory
    keep_freed_memory(KEEP_FREED, KEEP_FREED)
x = torch.ones(64 * 2**18)  # a band's 64 MB block, freed
del x
before = rss_mb()
y = torch.ones(48 * 2**18)  # the next band's, a little smaller
print(rss_mb() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not platform.libc_ver()[0] == "glibc",
                    reason="glibc's mallopt")
def test_a_freed_band_block_is_reused_not_faulted_in_anew():
    """runtime.heap.keep_freed_memory at KEEP_FREED: a band's freed block stays in the heap and the next
    band's tensors reuse its pages.
    Without it glibc hands any block over 32 MB back to the kernel, and the next band faults (and the kernel zeroes)
    its pages anew: what made CPU-seconds per megapixel rise with the photo (bench/results/photo.json)."""
    def new_pages(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", _HEAP_PROBE, mode], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parents[1], env={**os.environ, "OMP_NUM_THREADS": "1"})
        return float(out.stdout.split()[-1])

    assert new_pages("keep") < 8  # MB: the freed block's pages, reused
    assert new_pages("plain") > 40  # the probe tells the two apart: glibc's own behaviour faults the 48 MB in
