"""The `app` command: the interactive page (vpltool.api.app, on Gradio: the ``app`` extra)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..config import APP_MODEL, APP_PRETRAINED, AppConfig, SegmentConfig
from .options import MODEL, RUNTIME, Device

_A = AppConfig()


def app_cmd(
    host: Annotated[str, typer.Option(help="The address to listen on: 127.0.0.1 is this machine alone; 0.0.0.0 "
                                      "serves the network (anyone who reaches it can segment photos).")] = _A.host,
    port: Annotated[int, typer.Option(help="The TCP port (0: a free one).")] = _A.port,
    share: Annotated[bool, typer.Option("--share", help="Also a public link through Gradio's share servers "
                                        "(*.gradio.live); off unless given.")] = _A.share,
    method: Annotated[Optional[str], typer.Option(help="The method the page offers first (vpltool.list_methods(); "
                                                  f"[default: segment's, {SegmentConfig.dense}]).",
                                                  show_default=False)] = None,
    model: Annotated[str, typer.Option(help="The model the page offers first: a CLIP (vpltool.list_models()), "
                                       "local-dir:/path, or NAME:FILE; the toy CLIP runs offline.",
                                       rich_help_panel=MODEL)] = APP_MODEL,
    pretrained: Annotated[str, typer.Option(help="Its weights (an open_clip tag, a file, none).",
                                            rich_help_panel=MODEL)] = APP_PRETRAINED,
    templates: Annotated[Optional[str], typer.Option(help="Prompt templates, as segment's [default: the toy "
                                                     "CLIP's 'a photo of a {}.'; other models segment's "
                                                     "imagenet].", show_default=False)] = None,
    background: Annotated[Optional[str], typer.Option(help="Background words, as segment's [default: the toy "
                                                      "CLIP's grass,sky,wall,water; other models segment's "
                                                      "auto].", show_default=False)] = None,
    demo_photos: Annotated[int, typer.Option(help="The demo world's val photos offered as examples.",
                                             rich_help_panel=RUNTIME)] = _A.demo_photos,
    device: Device = "auto",
) -> None:
    """Serve an interactive page: drop a photo, type class names, pick a method and a model, and see the overlay,
    each class's share of the photo, and the palette mask PNG to download (segment's mask for the same photo and
    names). Offline with the toy CLIP by default; Gradio's analytics off. Needs Gradio: make setup installs it, or
    pip install -e '.[app]' in vpltool's checkout.

    \b
    Example:
      vpltool app
      vpltool app --model ViT-B-16 --pretrained openai --port 8080
    """
    from ..api.app import PageDefaults, require_gradio, serve
    from ..api.methods import check_method
    from .output import say

    cfg = AppConfig(host=host, port=port, share=share, demo_photos=demo_photos)
    if method is not None:
        check_method(method)
    require_gradio()  # the extra, before any model loads
    defaults = PageDefaults(method=method, model=model, pretrained=pretrained, templates=templates,
                            background=background, device=device)
    serve(cfg, defaults, on_ready=lambda url: say(f"[green]✓[/] vpltool app on {url} (Ctrl+C stops it)"))
