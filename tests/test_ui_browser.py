"""`colorize-ui` driven in headless Chromium: upload, result, download, bad uploads, examples.

The server runs as a real `colorize-ui` subprocess on a free localhost port; the browser is Debian's
Chromium (installed by `tests/install_browser.sh`), driven through Playwright. Without Chromium the
tests FAIL with the install command: a missing browser must not pass as green.

The generator is a small fresh network whose final bias makes ab_net ≈ tanh(0.35) ≈ 0.34, i.e. an
orange cast of a*, b* ≈ +43 on every photo (`_colorize_helpers.COLOUR_BIAS`). "Coloured" is then
checked as median CIELAB chroma > 20: a greyscale upload has chroma < 1 (PNG round trip of equal
R, G, B), and the cast gives ≈ 60 before darkest and brightest pixels are desaturated to fit sRGB.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _colorize_helpers import chroma, console_script, make_weights, subprocess_env

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parent.parent
MAX_PIXELS = 1_000_000  # small limits, so the "too large" uploads stay cheap to make and send
MAX_BYTES = 1_500_000
CHROMA_COLOURED = 20.0
RESULT_TIMEOUT_MS = 60_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """URL of a running `colorize-ui` (stopped after the module's tests)."""
    folder = tmp_path_factory.mktemp("ui")
    weights = make_weights(folder / "generator.safetensors")
    port = _free_port()
    log = open(folder / "server.log", "w+")
    proc = subprocess.Popen(
        [
            console_script("colorize-ui"),
            "--weights",
            str(weights),
            "--port",
            str(port),
            "--device",
            "cpu",
            "--max-pixels",
            str(MAX_PIXELS),
            "--max-bytes",
            str(MAX_BYTES),
            "--size",
            "256",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=subprocess_env(),
        cwd=folder,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    try:
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"colorize-ui exited with {proc.returncode}:\n{log.read()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"colorize-ui did not answer on {url} within 90 s:\n{log.read()}")
            time.sleep(0.3)  # polling a starting server, not waiting for a result
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} not found: the browser test needs Debian's Chromium; run `bash tests/install_browser.sh` (as root)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1100, "height": 1150}, accept_downloads=True)
    page = context.new_page()
    page.goto(server)
    page.wait_for_selector("#upload input[type=file]", state="attached", timeout=30_000)
    yield page
    context.close()


@pytest.fixture(scope="module")
def photos(tmp_path_factory, colour_photos):
    folder = tmp_path_factory.mktemp("uploads")
    grey = Image.fromarray(colour_photos["chelsea"]).convert("L")  # 451×300 greyscale photo
    grey.save(folder / "cat.png")
    (folder / "notes.png").write_text("shopping list: milk, eggs\n")  # text renamed .png
    Image.new("L", (1500, 1000), 128).save(folder / "wide.png")  # 1.5 MP, a few kB
    return folder


def _upload(page, path: Path) -> None:
    page.locator("#upload input[type=file]").set_input_files(str(path))


def _toasts(page) -> list[str]:
    return page.locator("[data-testid=toast-body]").all_inner_texts()


def _download_result(page, tmp_path: Path) -> np.ndarray:
    """Wait for the result, click "Download PNG", return the downloaded image (H×W×3 uint8)."""
    page.wait_for_selector("#result img", timeout=RESULT_TIMEOUT_MS)
    button = page.locator("#download")
    button.wait_for(state="visible")
    page.wait_for_function("() => !document.querySelector('#download').disabled", timeout=RESULT_TIMEOUT_MS)
    with page.expect_download(timeout=RESULT_TIMEOUT_MS) as download:
        button.click()
    assert download.value.suggested_filename.endswith("_colorized.png")
    target = tmp_path / download.value.suggested_filename
    download.value.save_as(target)
    return np.asarray(Image.open(target).convert("RGB"))


def test_upload_gives_coloured_full_size_result(page, photos, tmp_path):
    _upload(page, photos / "cat.png")
    result = _download_result(page, tmp_path)
    assert result.shape == (300, 451, 3)  # the upload's own size
    upload = np.asarray(Image.open(photos / "cat.png").convert("RGB"))
    assert np.median(chroma(upload)) < 1
    assert np.median(chroma(result)) > CHROMA_COLOURED
    page.wait_for_selector("#compare img", timeout=RESULT_TIMEOUT_MS)  # the before/after slider is filled
    assert page.locator("#compare img").count() == 2
    assert _toasts(page) == []
    assert "Error" not in page.locator("#result").inner_text()
    Path(REPO / "artifacts").mkdir(exist_ok=True)
    page.screenshot(path=str(REPO / "artifacts" / "ui.png"), full_page=True)


def test_text_file_gets_message_and_page_keeps_working(page, photos, tmp_path):
    _upload(page, photos / "notes.png")
    page.wait_for_selector("[data-testid=toast-body]", timeout=RESULT_TIMEOUT_MS)
    (message,) = _toasts(page)
    assert "notes.png is not an image this page can read (cannot identify image file)" in message
    assert "Traceback" not in message
    _upload(page, photos / "cat.png")
    assert np.median(chroma(_download_result(page, tmp_path))) > CHROMA_COLOURED


def test_too_many_pixels_and_too_many_bytes_are_refused(page, photos, tmp_path):
    _upload(page, photos / "wide.png")
    page.wait_for_selector("[data-testid=toast-body]", timeout=RESULT_TIMEOUT_MS)
    assert "wide.png is 1500×1000 = 1.5 megapixels; the limit is 1 megapixels." in _toasts(page)[0]
    page.locator("[data-testid=toast-close]").first.click()
    noise = np.random.default_rng(0).integers(0, 256, (800, 800, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")  # ~1.9 MB: over MAX_BYTES, under MAX_PIXELS
    assert (tmp_path / "noise.png").stat().st_size > MAX_BYTES
    _upload(page, tmp_path / "noise.png")
    page.wait_for_selector("[data-testid=toast-body]", timeout=RESULT_TIMEOUT_MS)
    assert "exceed the maximum allowed size" in _toasts(page)[0] and "noise.png" in _toasts(page)[0]


def test_example_click_colourises(page, tmp_path):
    page.locator(".gallery-item, [data-testid=examples] button, button.gallery-item").first.click()
    result = _download_result(page, tmp_path)
    assert np.median(chroma(result)) > CHROMA_COLOURED
    if os.environ.get("COLORIZE_UPDATE_DOCS_SCREENSHOT") == "1":  # refresh the README's picture on request
        shot = tmp_path / "ui.png"
        page.screenshot(path=str(shot), full_page=True)
        full = Image.open(shot).convert("RGB")  # 3/4 scale, 96 colours: ~190 kB in the repository
        small = full.resize((full.width * 3 // 4, full.height * 3 // 4), Image.LANCZOS).quantize(
            96, Image.Quantize.MEDIANCUT
        )
        small.save(REPO / "docs" / "ui.png", optimize=True)
