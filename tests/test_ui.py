"""`colorize-ui` as a real server, without a browser: its `/colorize` API through gradio_client, and a
port that is already taken."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _colorize_helpers import chroma, console_script, make_weights, subprocess_env


def _colorize_ui(weights: Path, port: int) -> list[str]:
    return [
        console_script("colorize-ui"),
        "--weights",
        str(weights),
        "--port",
        str(port),
        "--device",
        "cpu",
        "--size",
        "256",
    ]


def test_a_taken_port_is_one_line_naming_the_option(tmp_path):
    weights = make_weights(tmp_path / "generator.safetensors")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            _colorize_ui(weights, port), capture_output=True, text=True, env=subprocess_env(), timeout=120
        )
    assert result.returncode == 2
    assert result.stdout == ""  # no "serving on …" before the failure
    assert result.stderr.strip().splitlines() == [
        f"error: port {port} on 127.0.0.1 is already in use: choose another with --port"
    ]


@pytest.mark.slow
def test_the_api_returns_plain_values(tmp_path, colour_photos):
    from gradio_client import Client, handle_file

    weights = make_weights(tmp_path / "generator.safetensors")
    grey = tmp_path / "grey.png"
    Image.fromarray(colour_photos["coffee"]).convert("L").resize((300, 200)).save(grey)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "server.log", "w+")
    proc = subprocess.Popen(_colorize_ui(weights, port), stdout=log, stderr=subprocess.STDOUT, env=subprocess_env())
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "colorize-ui did not answer"
                time.sleep(0.3)  # polling a starting server
        assert f"serving {weights} on http://127.0.0.1:{port}" in (tmp_path / "server.log").read_text()
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        assert list(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == ["/colorize"]
        colour, (before, after), download = client.predict(handle_file(str(grey)), api_name="/colorize")
        for path in (colour, before, after, download):
            assert isinstance(path, str) and Path(path).is_file(), path
        result = np.asarray(Image.open(download).convert("RGB"))
        assert result.shape == (200, 300, 3) and np.median(chroma(result)) > 20
        assert np.asarray(Image.open(before).convert("RGB")).std(axis=2).max() == 0  # the grey side is grey
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
