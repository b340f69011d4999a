"""`vpltool app`: an interactive page (Gradio, the ``app`` extra) where a person drops a photo, types class names and
sees the mask (docs/app.md).

The page is a face on the Python door: it loads a :func:`vpltool.segmenter` (the same one `vpltool segment` runs,
with its defaults, so the mask is `segment`'s), calls it on the photo file as uploaded (the bytes, never re-encoded,
checked as `segment` checks a file), and shows the overlay (:meth:`~vpltool.api.Segmentation.overlay`, `segment
--overlay`'s picture), each class's share of the photo and box with its colour, and the palette mask PNG to download
(:meth:`~vpltool.api.Segmentation.save`, `segment`'s format). A user's mistake is the library's one line, shown in the
page's status box; progress shows while a model loads and while the photo runs.

It runs offline with the demo world's toy CLIP by default, binds 127.0.0.1 unless told (``--host``), makes no
public link unless asked (``--share``), and turns Gradio's analytics and version check off before Gradio is imported.
"""

from __future__ import annotations

import html
import os
import sys
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.app import APP_MODEL, APP_PRETRAINED, APP_TOY_BACKGROUND, APP_TOY_TEMPLATES, AppConfig
from ..errors import MissingDependencyError, VplError, install_extra

TITLE = "vpltool: segment a photo by class names"


def require_gradio() -> None:
    """One line when the ``app`` extra is missing, or installed but broken (it does not import: a dependency of
    another version, a file missing), before any model loads: Gradio is imported here (:func:`gradio`)."""
    gradio()


def gradio():
    """Gradio, imported with its analytics and version check off (and Hugging Face's telemetry); one line
    (:class:`~vpltool.errors.MissingDependencyError`) when it is not installed or does not import."""
    import importlib.util

    if "gradio" in sys.modules and sys.modules["gradio"] is not None:
        return sys.modules["gradio"]
    try:
        found = importlib.util.find_spec("gradio")
    except (ImportError, ValueError):  # a package whose __spec__ is broken
        found = None
    if found is None:
        raise MissingDependencyError(f"vpltool app needs Gradio: {install_extra('app')} "
                                     "(make setup installs it)")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio as gr
    except Exception as e:  # noqa: BLE001 (whatever a broken install raises: one line, never a traceback)
        where = found.origin or (list(found.submodule_search_locations or []) or ["?"])[0]
        text = (str(e).strip().splitlines() or [""])[0][:200]
        raise MissingDependencyError(f"vpltool app: Gradio is installed ({where}) but does not import "
                                     f"({type(e).__name__}: {text}); reinstall it: pip install --force-reinstall "
                                     f"gradio (or {install_extra('app')})") from None
    return gr


@dataclass(frozen=True)
class PageDefaults:
    """What the page offers first: a method of :func:`vpltool.list_methods`, a model of :func:`vpltool.list_models`
    and its weights; the templates and background words (None: the model's, :func:`query_defaults`); the device."""

    method: str | None = None
    model: str = APP_MODEL
    pretrained: str = APP_PRETRAINED
    templates: str | None = None
    background: str | None = None
    device: str = "auto"


def query_defaults(model: str) -> tuple[str, str]:
    """``(templates, background)`` the page fills in for ``model``: the demo world's words for the toy CLIP (the only
    words it knows), `segment`'s defaults for any other."""
    from ..config import SegmentConfig

    if model == APP_MODEL:
        return APP_TOY_TEMPLATES, APP_TOY_BACKGROUND
    return SegmentConfig.templates, SegmentConfig.background


def pretrained_for(model: str, given: str | None = None) -> str:
    """The weights the page fills in for ``model``: its first tag (:func:`vpltool.list_pretrained`; ``none`` for a
    registered alias), else ``given``."""
    from .models import list_pretrained

    tags = [t for m, t in list_pretrained() if m == model]
    return tags[0] if tags else (given or "")


def demo_photos(folder: Path, n: int) -> list[Path]:
    """The demo world's first ``n`` val photos, as `make-world` renders them (``val_000000.png``, ... of seed 0),
    written to ``folder``."""
    from PIL import Image

    from ..demo.config import WorldConfig
    from ..demo.scenes import generate_scenes, split_seed

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, scene in enumerate(generate_scenes(n, split_seed(WorldConfig.seed, "val"))):
        path = folder / f"val_{i:06d}.png"
        Image.fromarray(scene.image).save(path)
        out.append(path)
    return out


class Segmenters:
    """The segmenters the page has loaded, the last ``size`` kept (switching back to a model does not load it
    again)."""

    def __init__(self, size: int, device: str):
        self.size, self.device, self.loaded = size, device, OrderedDict()

    def get(self, method: str | None, model: str, pretrained: str, templates: str, background: str):
        from .segmenters import segmenter

        text_family = ":" in model and model.split(":", 1)[0] in _text_names()
        key = (None if text_family else method, model, pretrained, templates, background)
        if key not in self.loaded:
            options = {} if text_family else dict(pretrained=pretrained, templates=templates, background=background)
            self.loaded[key] = segmenter(None if text_family else method, model=model, device=self.device, **options)
            while len(self.loaded) > self.size:
                self.loaded.popitem(last=False)
        self.loaded.move_to_end(key)
        return self.loaded[key]


def _text_names() -> tuple[str, ...]:
    from ..models.registry import SEGMENTERS

    return tuple(SEGMENTERS)


def shares_table(result) -> str:
    """The legend as HTML: per class found, its colour, its name, its share of the photo and its box."""
    import numpy as np

    from ..io.images import voc_palette

    palette = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)
    areas, boxes = result.areas(), result.boxes()
    rows = []
    for c, name in enumerate(result.classes):
        if boxes[name] is None:
            continue
        r, g, b = (int(v) for v in palette[c])
        box = ", ".join(map(str, boxes[name]))
        rows.append(f'<tr data-class="{html.escape(name)}"><td><span style="display:inline-block;width:1em;'
                    f'height:1em;border:1px solid #000;background:rgb({r},{g},{b})"></span></td>'
                    f"<td>{html.escape(name)}</td><td>{100 * areas[name]:.1f} %</td><td>{box}</td></tr>")
    return ("<table><thead><tr><th></th><th>class</th><th>share of the photo</th><th>box (left, top, right, "
            f"bottom)</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


class Page:
    """The page's state and its one action: segment the photo."""

    def __init__(self, cfg: AppConfig, defaults: PageDefaults):
        from ..config import SegmentConfig

        self.cfg, self.defaults = cfg, defaults
        self.method = defaults.method or SegmentConfig.dense
        self.segmenters = Segmenters(cfg.cache, defaults.device)
        self.folder = Path(tempfile.mkdtemp(prefix="vpltool-app-"))
        self.photos = demo_photos(self.folder / "demo", cfg.demo_photos)

    def warm(self) -> None:
        """Load the segmenter the page offers first, before it is served: a model or weights that cannot load is
        the command's one line, not an error on the first photo."""
        templates, background = query_defaults(self.defaults.model)
        self.segmenters.get(self.method, self.defaults.model, self.defaults.pretrained,
                            self.defaults.templates or templates, self.defaults.background or background)

    def segment(self, photo: Any, classes: str, method: str, model: str, pretrained: str, templates: str,
                background: str, threshold: float | None, progress: Any = None):
        """The button's action (inputs not preprocessed: the photo is Gradio's upload record, its file as sent).
        Returns ``(overlay, legend HTML, mask PNG path, status line)``; a :class:`VplError` is the status line."""
        import warnings

        from ..errors import VplWarning

        path, name = _upload(photo)
        # what the library warns (the toy CLIP's unknown words, a class found nowhere) is shown in the page's status
        # under the result, as `segment` prints it under its run, not only in the server's terminal
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always", VplWarning)
            try:
                if path is None:
                    raise VplError("photo: upload or drop a photo, or pick one of the demo world's below")
                if progress is not None:
                    progress(0.1, desc=f"loading {method} on {model}")
                seg = self.segmenters.get(method, model.strip(), (pretrained or "").strip(), templates, background)
                if progress is not None:
                    progress(0.5, desc=f"segmenting {name}")
                result = seg(path, classes, **({} if threshold is None else {"threshold": threshold}))
                out = Path(tempfile.mkdtemp(prefix="mask-", dir=self.folder))
                mask = result.save(out / f"{Path(name).stem}_mask.png")
            except VplError as e:
                line = str(e).replace(str(path), name) if path is not None else str(e)
                return None, "", None, f"error: {line}{_warning_lines(said, path, name)}"
        found = [c for c, box in result.boxes().items() if box is not None and c != "background"]
        h, w = result.labels.shape
        status = (f"✓ {seg.method} on {model}: {name} ({w}x{h}), {len(found)} of {len(result.classes) - 1} classes "
                  f"found: {', '.join(found) or 'none'}{_warning_lines(said, path, name)}")
        return result.overlay(), shares_table(result), str(mask), status


def _warning_lines(caught: list, path: str | None, name: str) -> str:
    """The library's warnings of one action as ``warning:`` lines after the status (each once, in order; the
    upload's temporary path shown as the name the user knows)."""
    from ..errors import VplWarning

    lines = dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, VplWarning))
    if path is not None:
        lines = dict.fromkeys(line.replace(str(path), name) for line in lines)
    return "".join(f"\nwarning: {line}" for line in lines)


def _upload(photo: Any) -> tuple[str | None, str]:
    """Gradio's upload record (or a path) -> ``(the file's path, the name the user knows it by)``."""
    if photo is None:
        return None, ""
    if isinstance(photo, dict):
        path = photo.get("path")
        return path, Path(photo.get("orig_name") or path or "photo").name
    return str(photo), Path(str(photo)).name


def build_page(page: Page):
    """The Gradio Blocks of ``page`` (not launched)."""
    gr = gradio()
    from .methods import list_methods, method_summary
    from .models import list_models

    d = page.defaults
    templates, background = query_defaults(d.model)
    models = list_models(family="clip")
    with gr.Blocks(title=TITLE, analytics_enabled=False) as blocks:
        gr.Markdown(f"## {TITLE}\nDrop a photo (or pick one of the demo world's), type the class names (synonyms "
                    "as `cat|kitten`), and segment: the mask is `vpltool segment`'s for the same photo and names.")
        with gr.Row():
            with gr.Column():
                photo = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], label="Photo",
                                 elem_id="photo")
                if page.photos:
                    gr.Examples([[str(p)] for p in page.photos], inputs=[photo],
                                label="The demo world's photos (make-world's val split)")
                classes = gr.Textbox(label="Class names, comma-separated", placeholder="cat|kitten, dog",
                                     value="circle, star, square" if d.model == APP_MODEL else "", elem_id="classes")
                method = gr.Dropdown(list_methods(), value=page.method, label="Method", elem_id="method")
                about = gr.Markdown(method_summary(page.method), elem_id="method-info")
                model = gr.Dropdown(models if d.model in models else [d.model, *models], value=d.model,
                                    allow_custom_value=True, label="Model (a CLIP, local-dir:/path, or NAME:FILE)",
                                    elem_id="model")
                pretrained = gr.Textbox(d.pretrained, label="Weights (pretrained)", elem_id="pretrained")
                with gr.Accordion("Options", open=False):
                    tmpl = gr.Textbox(d.templates or templates, label="Templates (imagenet | clip-es | a template "
                                      "with {})", elem_id="templates")
                    bg = gr.Textbox(d.background or background, label="Background words (auto | none | w1,w2)",
                                    elem_id="background")
                    threshold = gr.Number(None, label="Probability threshold (blank: the method's)",
                                          elem_id="threshold")
                run = gr.Button("Segment", variant="primary", elem_id="run")
            with gr.Column():
                overlay = gr.Image(label="Overlay", type="pil", format="png", interactive=False, elem_id="overlay")
                legend = gr.HTML(elem_id="shares")
                mask = gr.File(label="Palette mask (PNG)", interactive=False, elem_id="mask")
                status = gr.Textbox(label="Status", interactive=False, max_lines=8, elem_id="status")
        method.change(lambda m: method_summary(m), method, about)
        model.change(lambda m: (pretrained_for(m, ""), *query_defaults(m)), model, [pretrained, tmpl, bg])

        def segment(photo, classes, method, model, pretrained, tmpl, bg, threshold, progress=gr.Progress()):
            return page.segment(photo, classes, method, model, pretrained, tmpl, bg, threshold, progress)

        run.click(segment, [photo, classes, method, model, pretrained, tmpl, bg, threshold],
                  [overlay, legend, mask, status], preprocess=False)
    return blocks


def serve(cfg: AppConfig, defaults: PageDefaults, on_ready=None) -> None:
    """Build the page and serve it on ``cfg.host:cfg.port`` until interrupted; ``on_ready(url)`` once it listens.
    The default segmenter is loaded first (:meth:`Page.warm`); the page's files (the demo photos, the masks made)
    are removed when it stops."""
    import shutil

    if cfg.share:  # Gradio's share servers, before anything loads: offline, one line, not Gradio's eight
        check_share()
    page = Page(cfg, defaults)
    # Gradio's own files (uploads, the examples' copies) in the page's folder, unless the user keeps them elsewhere
    os.environ.setdefault("GRADIO_TEMP_DIR", str(page.folder / "gradio"))
    try:
        page.warm()
        blocks = build_page(page)
        port = cfg.port or _free_port(cfg.host)
        try:
            blocks.queue().launch(server_name=cfg.host, server_port=port, share=cfg.share, quiet=True,
                                  show_error=False, inbrowser=False, prevent_thread_lock=True,
                                  allowed_paths=[str(page.folder)])
        except OSError as e:
            if "port" not in str(e).lower():
                raise
            raise VplError(f"--port {port} is in use on {cfg.host}; pass another --port, or 0 for a free one") from None
        if on_ready is not None:
            on_ready(blocks.share_url or f"http://{cfg.host}:{port}")
        try:
            blocks.block_thread()
        finally:
            blocks.close(verbose=False)
    finally:
        shutil.rmtree(page.folder, ignore_errors=True)


SHARE_HOST = "api.gradio.app"  # where Gradio asks for a *.gradio.live tunnel


def check_share() -> None:
    """One line when ``--share`` cannot work: the share servers' address does not resolve (offline, or a network
    that blocks them)."""
    import socket

    try:
        socket.getaddrinfo(SHARE_HOST, 443)
    except OSError:
        raise VplError(f"--share makes a public link through Gradio's share servers ({SHARE_HOST}), which cannot be "
                       "reached from here (offline?); drop --share to serve this machine alone, or --host 0.0.0.0 for "
                       "your network") from None


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


__all__ = ["Page", "PageDefaults", "Segmenters", "build_page", "check_share", "demo_photos", "gradio",
           "pretrained_for", "query_defaults", "require_gradio", "serve", "shares_table"]
