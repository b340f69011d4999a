"""`vpltool app`, the interactive page, driven in a real browser: headless Chromium uploads a demo photo, types class
names and segments; the mask the page offers for download equals `vpltool segment`'s for the same photo and names,
label for label; a bad input shows its one line in the page. Skipped, with the reason, where Gradio or Chromium is
missing (.ci/run installs Chromium; Gradio is in the test extra)."""

from __future__ import annotations

import importlib.util
import io as bytes_io
import os
import queue
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from chromium import chromium, require_chromium, wait_for
from killed_runs import free_port
from PIL import Image
from typer.testing import CliRunner

from vpltool import io
from vpltool.cli import app
from vpltool.config import SegmentConfig
from vpltool.config.app import APP_TOY_BACKGROUND, APP_TOY_TEMPLATES

ROOT = Path(__file__).resolve().parents[1]
NAMES = "circle, star|diamond, square"
STATUS = "const e = document.querySelector('#status textarea, #status input'); return e && e.value"

# skipped where gradio is not installed, found without importing it: every pytest process collects this module (each
# worker of `make test`'s two passes), and gradio's import cost each of them ~3 CPU-s where one runs these tests
pytestmark = pytest.mark.skipif(importlib.util.find_spec("gradio") is None,
                                reason="gradio is not installed (pip install -e '.[app]' or '.[test]')")
browser = pytest.fixture(chromium)


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    """`vpltool app` in a subprocess on a free local port, until the module ends; its URL once it says it
    listens."""
    require_chromium()  # no app started for a browser that is not there
    port = free_port()
    env = {**os.environ, "VPLTOOL_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("GRADIO_TEMP_DIR", None)  # the app's own: its page folder, removed when it stops
    proc = subprocess.Popen([sys.executable, "-m", "vpltool", "app", "--port", str(port), "--demo-photos", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    said = []
    try:
        while True:
            line = lines.get(timeout=120)
            said.append(line)
            if "vpltool app on " in line:
                break
        url = line.split("vpltool app on ", 1)[1].split()[0]
        assert url == f"http://127.0.0.1:{port}", said  # this machine alone, no share link
        yield url
    except queue.Empty:
        pytest.fail("the app did not start within 120 s: " + "".join(said))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _segment(chrome, photo: Path, names: str) -> str:
    """Upload ``photo``, type ``names``, press Segment; the status line once it changes."""
    from selenium.webdriver.common.by import By

    before = chrome.execute_script(STATUS) or ""
    chrome.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(photo))
    wait_for(chrome, "return document.querySelector('#photo img') !== null", 20)
    box = chrome.find_element(By.CSS_SELECTOR, "#classes textarea, #classes input")
    box.clear()
    box.send_keys(names)
    chrome.find_element(By.CSS_SELECTOR, "#run").click()
    return wait_for(chrome, STATUS.replace("return e && e.value", f"return e && e.value !== {before!r} && e.value"),
                    120)


def test_the_page_s_mask_is_segment_s_and_a_bad_input_shows_its_line(browser, page_url, world, tmp_path):
    photo = sorted((world / "images").glob("val_*.png"))[0]
    out = tmp_path / "seg"
    r = CliRunner().invoke(app, ["segment", str(photo), "--classes", NAMES.replace(" ", ""), "-o", str(out),
                                 "--dense", SegmentConfig.dense, "--model", "vpltool-toy", "--pretrained", "none",
                                 "--templates", APP_TOY_TEMPLATES, "--background", APP_TOY_BACKGROUND,
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    cli = io.read_mask(io.mask_path(out, photo.stem))

    browser.get(page_url)
    wait_for(browser, "return document.querySelector('#photo input[type=file]') !== null", 60)
    status = _segment(browser, photo, NAMES)
    assert status.startswith(f"✓ {SegmentConfig.dense} on vpltool-toy: {photo.name} (96x96)"), status
    href = wait_for(browser, "const a = document.querySelector('#mask a[download]'); return a && a.href", 20)
    assert href.startswith(page_url) and href.endswith(f"{photo.stem}_mask.png")
    with urllib.request.urlopen(href, timeout=30) as answer:  # the download, as the browser fetches it
        png = Image.open(bytes_io.BytesIO(answer.read()))
    assert png.mode == "P" and png.getpalette()[:6] == [0, 0, 0, 128, 0, 0]  # segment's VOC palette
    mask = np.asarray(png)
    assert mask.dtype == np.uint8 and mask.tobytes() == cli.tobytes()  # the same labels, byte for byte
    assert len(np.unique(cli)) > 1
    shown = browser.execute_script("return Array.from(document.querySelectorAll('#shares tr[data-class]'))"
                                   ".map(tr => tr.dataset.class)")
    classes = ["background", "circle", "star", "square"]
    assert shown == [classes[c] for c in np.unique(cli)]  # the legend: each class the mask holds, in class order
    assert browser.execute_script("return document.querySelector('#overlay img') !== null")

    # bad input: its one line in the status box, never a traceback
    status = _segment(browser, photo, "circle, Circle")
    assert status.startswith("error: classes: 'circle' and 'Circle' are named twice"), status
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tiny)
    status = _segment(browser, tiny, NAMES)
    assert status.startswith("error: tiny.png: 8x8 pixels, too small to segment"), status
    assert "\n" not in status and "Traceback" not in browser.page_source
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_a_port_in_use_is_one_line_and_the_page_s_files_go(tmp_path, monkeypatch):
    """Refused after the model loaded and the page was built, before anything is served; nothing left behind."""
    import socket
    import tempfile

    import gradio  # noqa: F401  (imported before the temp folder moves: its import makes a folder of its own there)

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the page's folder (and Gradio's files), to see it go
    monkeypatch.setenv("GRADIO_TEMP_DIR", "")  # recorded, so that the app's own value goes after the test
    monkeypatch.delenv("GRADIO_TEMP_DIR")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        r = CliRunner().invoke(app, ["app", "--port", str(port), "--demo-photos", "1", "--device", "cpu"])
    assert r.exit_code == 2 and r.output.strip() == (f"error: --port {port} is in use on 127.0.0.1; pass another "
                                                     "--port, or 0 for a free one"), r.output
    assert not list(tmp_path.iterdir())


def test_a_warning_of_the_library_reaches_the_page_s_status(world, tmp_path, monkeypatch):
    """The toy CLIP's unknown-word warning is a warning: line of the page's status under the result (it went to the
    server's terminal alone)."""
    import tempfile

    from vpltool.api.app import Page, PageDefaults
    from vpltool.config.app import AppConfig

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    page = Page(AppConfig(demo_photos=1), PageDefaults(device="cpu"))
    _, _, mask, status = page.segment(str(page.photos[0]), "triangle, cross|plus", "maskclip", "vpltool-toy", "none",
                                      APP_TOY_TEMPLATES, APP_TOY_BACKGROUND, None)
    lines = status.splitlines()
    assert lines[0].startswith("✓ maskclip on vpltool-toy: val_000000.png (96x96)") and mask, status
    assert lines[1:] and all(x.startswith("warning: ") for x in lines[1:]), status
    assert "the toy CLIP does not know 'plus'" in lines[1], status


def test_share_offline_is_one_line_before_anything_loads(monkeypatch):
    """--share needs Gradio's share servers: where they cannot be reached, one line and exit 2, before any model
    loads (Gradio printed eight lines)."""
    import socket

    from vpltool.api import app as page

    real = socket.getaddrinfo

    def lookup(host, *args, **kwargs):
        if host == page.SHARE_HOST:
            raise socket.gaierror("offline")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    monkeypatch.setattr(page, "Page", lambda *a, **k: pytest.fail("the page was built"))
    r = CliRunner().invoke(app, ["app", "--share", "--port", "0", "--device", "cpu"])
    assert r.exit_code == 2 and r.output.strip().splitlines() == [
        "error: --share makes a public link through Gradio's share servers (api.gradio.app), which cannot be reached "
        "from here (offline?); drop --share to serve this machine alone, or --host 0.0.0.0 for your network"], r.output
