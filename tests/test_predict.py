"""predict on the shared pipeline: images batched by their views' sizes, not their own (issue 28)."""

from __future__ import annotations

import shutil

import numpy as np
from PIL import Image

from vpltool import io
from vpltool.config import DecoderConfig, PredictConfig, RuntimeConfig
from vpltool.runtime import batches
from vpltool.stages import predict


def test_photos_of_different_sizes_with_the_same_view_grid_share_a_batch_and_keep_their_masks(
        world, gt_pseudo, text_protos, tmp_path, monkeypatch):
    """A 96x96 and a 95x93 photo both make 112x112 views (long side 102 = 1.6 x the 64-px crop, sides rounded up to
    the patch): one batch, and each mask at its own size, as when predicted one by one."""
    from vpltool.stages.train_decoder import run_train_decoder

    data = tmp_path / "world"
    shutil.copytree(world, data)
    image = data / "images" / "train_000001.png"
    Image.open(image).resize((93, 95), Image.BICUBIC).save(image)
    mask = data / "masks" / "train_000001.png"
    io.write_mask(mask, np.asarray(Image.open(mask).resize((93, 95), Image.NEAREST)))
    cfg = DecoderConfig(dim=16, layers=1, heads=2, crop_size=64, batch_size=2, iters=1, log_every=1, warmup_iters=1)
    run_train_decoder(gt_pseudo, text_protos, tmp_path / "d", cfg, RuntimeConfig(device="cpu", workers=1,
                                                                                  precision="fp32"))
    sizes, real = [], batches.load_batches  # the loop of predict: run_image_batches

    def recording(*args, **kwargs):
        for batch in real(*args, **kwargs):
            sizes.append(len(batch["index"]))
            yield batch

    monkeypatch.setattr(batches, "load_batches", recording)
    decoder = tmp_path / "d" / "decoder.safetensors"
    runs = {}
    for batch in (1, 6):
        runs[batch] = tmp_path / f"p{batch}"
        predict.run_predict(decoder, data, "train", runs[batch], PredictConfig(),
                            RuntimeConfig(device="cpu", precision="fp32", batch_size=batch, workers=1))
    assert sizes[:6] == [1] * 6 and sizes[6:] == [6]  # batch 6: all six photos, two raw sizes, in one batch
    assert io.read_mask(runs[6] / "train_000001.png").shape == (95, 93)
    for path in sorted(runs[1].glob("*.png")):
        assert np.array_equal(io.read_mask(path), io.read_mask(runs[6] / path.name)), path.name
