"""`vpltool app`'s defaults: the interactive page (docs/app.md). Torch-free, gradio-free."""

from __future__ import annotations

from dataclasses import dataclass

from .checks import at_least, require

APP_MODEL = "vpltool-toy"  # offline by default: the demo world's toy CLIP ships inside the package
APP_PRETRAINED = "none"  # the toy's weights are its folder's
# the toy CLIP knows only the demo world's words: the demo's prompt and its four backgrounds (vpltool.demo), as
# docs/api.md's examples give them; any other model gets segment's defaults (imagenet, auto)
APP_TOY_TEMPLATES = "a photo of a {}."
APP_TOY_BACKGROUND = "grass,sky,wall,water"


@dataclass(frozen=True)
class AppConfig:
    """Where the page listens and what it offers first."""

    host: str = "127.0.0.1"  # this machine alone; 0.0.0.0 serves the network (--host)
    port: int = 7860  # Gradio's usual port; 0: a free one
    share: bool = False  # Gradio's public *.gradio.live link: off unless asked (--share)
    demo_photos: int = 6  # the demo world's val photos offered as examples (make-world's val_000000.png, ...)
    cache: int = 2  # segmenters kept loaded (a model switched back to is not loaded again)

    def __post_init__(self) -> None:
        require(bool(self.host.strip()), "--host is empty: give 127.0.0.1 (this machine) or 0.0.0.0 (the network)")
        at_least("--port", self.port, 0, why=" (0 = a free port)")
        require(self.port <= 65535, f"--port {self.port}: a TCP port is at most 65535")
        at_least("--demo-photos", self.demo_photos, 0)
        at_least("--cache", self.cache, 1)


__all__ = ["APP_MODEL", "APP_PRETRAINED", "APP_TOY_BACKGROUND", "APP_TOY_TEMPLATES", "AppConfig"]
