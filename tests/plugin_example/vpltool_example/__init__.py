"""An example vpltool plugin: its light module, which vpltool imports to read the plugin's rows.

It imports no torch (vpltool calls :func:`register` when a command names one of its methods or lists the plugins,
`vpltool --help` included, in a child process first) and names the modules that do the work, which vpltool imports
only when their method or family is used.
"""

from __future__ import annotations

from dataclasses import dataclass

from vpltool.plugins import (
    DenseMethodSpec,
    DenseSettings,
    Licence,
    MethodKnobs,
    MethodPresets,
    VplError,
    knob,
    register_backbone_family,
    register_dense_method,
)

METHOD = "example-smooth"
# what a user may ship: the code it follows (its own) and the weights it loads (the CLIP's, by default OpenAI's)
LICENCE = Licence("MIT (the example's own)", "OpenAI CLIP ViT-B/16: MIT", note="a test's example plugin")


@dataclass(frozen=True)
class SmoothKnobs(MethodKnobs):
    """The method's own settings: one knob, which becomes `segment --smooth-size` and `benchmark --smooth-size`."""

    smooth_size: int | None = knob("--smooth-size", "the side, in pixels, of the box its probabilities are "
                                   "averaged over after the argmax (odd; 1 = off) [default: 5].")

    def __post_init__(self) -> None:
        if self.smooth_size is not None and (self.smooth_size < 1 or self.smooth_size % 2 == 0):
            raise VplError(f"--smooth-size {self.smooth_size}: give an odd number of pixels >= 1 (1 = off)")


# its segmentor, as NACLIP's runs VOC21 (the whole image, short side 336), without PAMR
SETTINGS = DenseSettings(logit_scale=40.0, prob_threshold=0.1, short_side=336, slide_crop=0, slide_stride=112,
                         crop_mode="floor", whole="input")
PRESETS = MethodPresets("vpltool-example (tests/plugin_example)",
                        {"dense": METHOD, "logit_scale": 40.0, "prob_threshold": 0.0, "slide_crop": 0,
                         "slide_stride": 112, "pamr_steps": 0, "area_threshold": 0.0},
                        "vpltool_example/__init__.py (the same settings on every benchmark)", {})


def register() -> None:
    """The entry point: the methods' rows and the family's module, nothing loaded."""
    register_dense_method(METHOD, DenseMethodSpec(SETTINGS, module="vpltool_example.method", knobs_class=SmoothKnobs,
                                                  presets=PRESETS, licence=LICENCE))
    # an attention method: NACLIP's segmentor, its last block's attention its own (vpltool_example/attention.py);
    # it reads only the block's q, k, v, so it runs on a timm tower (SigLIP 2, PE-Core) too
    register_dense_method("example-vv", DenseMethodSpec(SETTINGS, module="vpltool_example.attention",
                                                        timm_tower=True, licence=LICENCE))
    register_backbone_family("example-mean", "vpltool_example.family")
    # a CLIP family: --model example-clip:ARCH@SEED in every stage, vpltool.segmenter(model="example-clip:...")
    register_backbone_family("example-clip", "vpltool_example.clip_family")
