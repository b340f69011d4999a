"""Headless Chromium through Selenium and the system's chromedriver (Debian: chromium, chromium-driver), for the
pages' browser tests (the report's, the app's); skipped, with the reason, where no browser can be had."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest

CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000")


def require_chromium() -> tuple:
    """``(selenium's webdriver module, the browser's path, chromedriver's path)``, or a skip naming what is
    missing (cheap: call it before starting what the browser would look at)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e "
                                    "'.[test]')")
    binary = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("no Chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver; "
                    ".ci/run installs them when it runs as root)")
    return webdriver, binary, driver


def chromium() -> Iterator:
    """A started Chromium driver with a fresh profile, quit and removed after; a skip naming what is missing."""
    webdriver, binary, driver = require_chromium()
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    profile = tempfile.mkdtemp(prefix="vpltool-chromium-")
    for arg in (*CHROMIUM_ARGS, f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        chrome = webdriver.Chrome(service=Service(driver), options=options)
    except Exception as e:  # a browser that cannot start here (no display libraries, a sandbox): say why
        shutil.rmtree(profile, ignore_errors=True)
        pytest.skip(f"Chromium did not start: {str(e).splitlines()[0]}")
    chrome.set_page_load_timeout(30)
    yield chrome
    chrome.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_for(chrome, script: str, timeout: float = 10.0):
    """The first truthy value of ``script`` (JavaScript, ``return ...``) within ``timeout`` seconds."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(chrome, timeout).until(lambda d: d.execute_script(script))


__all__ = ["CHROMIUM_ARGS", "chromium", "require_chromium", "wait_for"]
