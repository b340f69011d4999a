"""The segmentation decoder of VPL phase 2, shared by train-decoder and predict.

* :mod:`~vpltool.decoder.network`: the network (frozen CLIP block outputs -> dense embeddings V -> scores against
  the prototypes W) and its file (save, load, rebuild).
* :mod:`~vpltool.decoder.losses`: CE, the regional semantic contrast (RSC, Eq. 13) and SSR's CMPA.
* :mod:`~vpltool.decoder.views`: test time, the views of an image (scales x flips) and their mean logits.
"""

from pathlib import Path

from ..config import licences
from ..models.registry import register_family
from .losses import (
    balanced_ce_loss,
    bilinear_weights,
    ce_loss,
    class_regions,
    cmpa_loss,
    mask_fractions,
    present_classes,
    refresh_bank,
    region_embeddings,
    region_masks,
    rsc_loss,
    spherical_kmeans,
    upsample_logits,
)
from .network import (
    MAX_LOGIT_SCALE,
    SegDecoder,
    block_features,
    build_decoder,
    config_from_json,
    decoder_arch,
    feature_blocks,
    load_decoder,
    save_decoder,
)
from .views import (
    LONG_SIDE_RATIO,
    class_argmax,
    decoder_forward,
    decoder_head,
    input_long_side,
    mirrored_mean,
    multiscale_logits,
    predict_logits,
    view_logits,
    view_size,
    weclip_views,
)

__all__ = [
    "MAX_LOGIT_SCALE", "SegDecoder", "feature_blocks", "block_features", "decoder_arch", "save_decoder",
    "build_decoder", "config_from_json", "load_decoder",
    "ce_loss", "balanced_ce_loss", "present_classes", "region_masks", "class_regions", "region_embeddings", "rsc_loss",
    "mask_fractions", "cmpa_loss", "spherical_kmeans", "refresh_bank", "bilinear_weights", "upsample_logits",
    "LONG_SIDE_RATIO", "input_long_side", "view_size", "view_logits", "multiscale_logits", "decoder_forward",
    "class_argmax", "decoder_head", "mirrored_mean",
    "predict_logits", "weclip_views",
]  # fmt: skip


def _check(path: str | Path, **_: object) -> None:
    """The decoder file's header: its kind and the metadata that rebuilds it (no tensor read)."""
    from .. import io
    from ..io.training import check_decoder_meta

    check_decoder_meta(io.read_tensors(path, kind=io.DECODER_KIND, keys=()))


# the trained decoder is a model family of the registry: `predict` loads it through the registry's one door
register_family("decoder", lambda path, device="cpu", **_: load_decoder(path, device), _check,
                summary="the segmentation decoder of train-decoder (its decoder.safetensors), read by predict",
                module=__name__, fix="re-run `vpltool train-decoder` (with --overwrite)",
                licence=licences.DECODER_FAMILY)
