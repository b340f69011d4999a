"""vpltool: weakly-supervised semantic segmentation with CLIP (CLIP-ES + VPL), one stage per command."""

__version__ = "0.1.0"
