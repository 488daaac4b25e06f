"""Progress bars: tqdm's live bar on a terminal, whole periodic lines in a log file (Slurm's
slurm-*.out, nohup.out, a redirect), for the shard build and training alike (configs/progress_bar.py)."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

from configs.progress_bar import progress_bar

VENV_BIN = Path(sys.executable).parent


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_whole_lines_and_a_terminal_a_live_bar():
    for stream in (io.StringIO(), _Terminal()):
        bar = progress_bar(total=3, desc="shards", unit="img", file=stream)
        for _ in range(3):
            bar.update(1)
        bar.close()
        text = stream.getvalue()
        if isinstance(stream, _Terminal):
            assert "\r" in text
        else:
            lines = text.splitlines()
            assert "\r" not in text and all(line.startswith("shards: ") for line in lines)
            assert lines[0].startswith("shards: 0/3 (0%)") and lines[-1].startswith("shards: 3/3 (100%)")


def _build(photos: Path, out: Path, stderr) -> subprocess.Popen:
    return subprocess.Popen(
        [str(VENV_BIN / "colorize-shards"), "build", str(photos), str(out), "--workers", "1", "--shard-samples", "4"],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


def test_shard_build_progress_is_plain_lines_in_a_file_and_a_bar_on_a_terminal(tmp_path):
    from shards.demo_images import write_demo_images

    photos = tmp_path / "photos"
    write_demo_images(photos, count=8, seed=0)
    with (tmp_path / "build.log").open("w") as log:
        assert _build(photos, tmp_path / "to-file", log).wait(timeout=120) == 0
    text = (tmp_path / "build.log").read_text()
    assert "\r" not in text and "shards: 8/8 (100%)" in text

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    build = _build(photos, tmp_path / "to-terminal", follower)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal's other end closed: the build has ended
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert build.wait(timeout=120) == 0
    assert b"\r" in seen and b"8/8" in seen
