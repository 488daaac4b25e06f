"""`colorize-ui`: a web page to upload a photo and get it colourised (Gradio).

    colorize-ui --weights runs/demo/generator.safetensors            → http://127.0.0.1:7860

Upload by drag-and-drop, paste or file picker (or click an example): the page shows the colourised
photo at the upload's full resolution (same method as `colorize`, see `pipeline.inference`), a
before/after slider, and a button to download the PNG. Uploads that are not images, or larger than
`--max-bytes` (default 25 MB) or `--max-pixels` (default 40 megapixels), get a readable message on
the page and nothing else happens; the page keeps working. Requests are queued and run one at a time
(the model is not thread-safe and one run already uses every core), never dropped.

The server binds to 127.0.0.1 unless `--host` says otherwise, makes no share link and sends no
analytics (GRADIO_ANALYTICS_ENABLED=False); the page uses system fonts, so it loads nothing from
outside either.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import errno
import html
import os
import shutil
import socket
import sys
import tempfile
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.image_io import ImageReadError, image_size, read_image, write_image

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_BYTES = 25 * 1024 * 1024
# Demo photos from skimage.data (they ship with the package, so no download): shown in grey.
EXAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
EXAMPLE_LONG_SIDE = 512
# Result folders kept on disk; older ones are deleted (Gradio keeps its own copy while it serves them).
KEPT_RESULTS = 32


class UploadError(ValueError):
    """An upload the page refuses; the message is shown to the user as is."""


def _megabytes(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


class UploadColorizer:
    """Validates one upload and writes its colourised PNG and grey version; no Gradio inside.

    `colorizer` is a `pipeline.inference.Colorizer`; files go under `work_dir`.
    """

    def __init__(
        self, colorizer: Any, work_dir: Path, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
    ):
        self.colorizer = colorizer
        self.work_dir = Path(work_dir)
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self._recent: deque[Path] = deque()

    def _file_from_payload(self, payload: Any) -> tuple[Path, str]:
        """(path on disk, name to show) of an upload: Gradio's FileData dict, a path, or a data: URL."""
        if payload is None:
            raise UploadError("Upload a photo first.")
        if isinstance(payload, (str, Path)):
            return Path(payload), Path(payload).name
        path, url = payload.get("path"), payload.get("url") or ""
        name = payload.get("orig_name") or (Path(path).name if path else "pasted image")
        if path:
            return Path(path), name
        if url.startswith("data:") and "," in url:  # some browsers paste as an inline data URL
            try:
                data = base64.b64decode(url.split(",", 1)[1], validate=False)
            except (binascii.Error, ValueError):
                raise UploadError(f"{name}: the pasted data could not be read.") from None
            if len(data) > self.max_bytes:
                raise UploadError(f"{name} is {_megabytes(len(data))}; the limit is {_megabytes(self.max_bytes)}.")
            target = self._new_dir() / "pasted"
            target.write_bytes(data)
            return target, name
        raise UploadError("The upload arrived without a file; please try again.")

    def _new_dir(self) -> Path:
        folder = self.work_dir / "results" / uuid.uuid4().hex
        folder.mkdir(parents=True)
        self._recent.append(folder)
        while len(self._recent) > KEPT_RESULTS:
            shutil.rmtree(self._recent.popleft(), ignore_errors=True)
        return folder

    def check(self, path: Path, name: str) -> None:
        """Raise UploadError when the file is too large, not an image, or has too many pixels."""
        size = path.stat().st_size
        if size > self.max_bytes:
            raise UploadError(f"{name} is {_megabytes(size)}; the limit is {_megabytes(self.max_bytes)}.")
        try:
            width, height = image_size(path)  # header only: refuse huge images before decoding them
        except ImageReadError as exc:
            raise UploadError(
                f"{name} is not an image this page can read ({exc}). Please upload a JPEG, PNG, WebP, TIFF or BMP photo."
            ) from None
        if width * height > self.max_pixels:
            raise UploadError(
                f"{name} is {width}×{height} = {width * height / 1e6:.1f} megapixels; "
                f"the limit is {self.max_pixels / 1e6:.0f} megapixels."
            )

    def __call__(self, payload: Any) -> tuple[str, str, str]:
        """Colourise an upload → (colour PNG path, grey PNG path, colour PNG path for download)."""
        path, name = self._file_from_payload(payload)
        self.check(path, name)
        try:
            rgb = read_image(path)
        except ImageReadError as exc:
            raise UploadError(f"{name} is not an image this page can read ({exc}).") from None
        result = self.colorizer.colorize([rgb], batch_size=1, with_grey=True)[0]
        folder = self._new_dir()
        stem = Path(name).stem or "photo"
        colour = write_image(folder / f"{stem}_colorized.png", result.rgb)
        grey = write_image(folder / f"{stem}_grey.png", result.grey)
        return str(colour), str(grey), str(colour)


def write_examples(folder: Path) -> list[str]:
    """Greyscale PNGs of the bundled demo photos (long side ≤ 512 px) in `folder`; their paths."""
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in EXAMPLE_PHOTOS:
        photo = Image.fromarray(np.asarray(getattr(skimage.data, name)())[..., :3]).convert("L")
        photo.thumbnail((EXAMPLE_LONG_SIDE, EXAMPLE_LONG_SIDE), Image.Resampling.LANCZOS)
        target = folder / f"{name}.png"
        photo.save(target)
        paths.append(str(target))
    return paths


def build_demo(uploads: UploadColorizer, examples: list[str]):
    """The Gradio Blocks page around `uploads`."""
    import gradio as gr

    def run(payload):
        """The `/colorize` API as well: plain values out (colour PNG, (grey, colour) PNGs, colour PNG)."""
        if payload is None:  # the input was cleared: clear the outputs too, no message
            return None, None, None
        try:
            colour, grey, download = uploads(payload)
        except UploadError as exc:
            # Gradio renders the message as HTML and it contains the user's file name: escape it.
            raise gr.Error(html.escape(str(exc)), title="Cannot colourise this file", print_exception=False) from None
        return colour, (grey, colour), download

    def enable_download(path):
        """The button can be pressed when it holds a file (a step of the page, not of the API)."""
        return gr.DownloadButton(interactive=path is not None)

    limits = f"{_megabytes(uploads.max_bytes)} and {uploads.max_pixels / 1e6:.0f} megapixels"
    with gr.Blocks(title="Colorize", analytics_enabled=False) as demo:
        gr.Markdown("# Colourise a photo\nDrop a black-and-white photo below, paste one, or click an example.")
        with gr.Row(equal_height=False):
            with gr.Column():
                upload = gr.Image(
                    label="Your photo", type="filepath", sources=["upload", "clipboard"], elem_id="upload"
                )
                gr.Examples(examples=[[p] for p in examples], inputs=[upload], label="Examples (click one)")
            with gr.Column():
                result = gr.Image(
                    label="Colourised", type="filepath", format="png", interactive=False, elem_id="result"
                )
                download = gr.DownloadButton("Download PNG", interactive=False, elem_id="download")
        with gr.Row(equal_height=False):
            compare = gr.ImageSlider(
                label="Before / after", type="filepath", format="png", interactive=False, elem_id="compare"
            )
            gr.Markdown(
                "### How it works\n"
                f"The network sees a copy of your photo about {uploads.colorizer.size} pixels across and predicts its colour "
                "(the a\\*, b\\* channels of CIELAB). That colour is enlarged to your photo's size and "
                "combined with your photo's own lightness, so the result keeps every pixel of detail "
                "and exactly the size you uploaded.\n\n"
                f"Uploads up to {limits}: JPEG, PNG, WebP, TIFF or BMP. Transparent areas become white."
            )
        # preprocess=False: the handler gets the raw upload, so it can check bytes and decode
        # errors itself and answer with a readable message instead of a decoding traceback.
        upload.change(
            run, inputs=[upload], outputs=[result, compare, download], preprocess=False, api_name="colorize"
        ).then(enable_download, inputs=[download], outputs=[download], api_visibility="private")
    return demo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="colorize-ui", description="Web page: upload a photo, get it colourised.")
    parser.add_argument("--weights", required=True, help="generator.safetensors (ours) or a seed G_*.pth")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"largest upload in pixels (default: {DEFAULT_MAX_PIXELS:,})",
    )
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=DEFAULT_MAX_BYTES,
        help=f"largest upload in bytes (default: {DEFAULT_MAX_BYTES:,})",
    )
    parser.add_argument(
        "--size", type=int, default=512, help="long side of the network's input, multiple of 256 (default: 512)"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda (default: auto)")
    return parser


def port_problem(host: str, port: int) -> str | None:
    """None when this process could listen on (host, port) now; else one line saying why, naming the
    option to change. Binds as the server does (SO_REUSEADDR), then lets go."""
    if not 0 < port < 65536:
        return f"--port {port}: not a TCP port (1-65535)"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        return f"--host {host}: not an address to listen on ({exc.strerror})"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is already in use: choose another with --port"
            return f"cannot listen on {host}:{port} ({exc.strerror}): choose another --host or --port"
    return None


def main(argv: list[str] | None = None) -> int:
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: it reads this once
    args = build_parser().parse_args(argv)
    if args.max_pixels < 1 or args.max_bytes < 1:
        print("error: --max-pixels and --max-bytes must be positive", file=sys.stderr)
        return 2
    # Before the model and Gradio load: a taken port is the most common start-up mistake.
    problem = port_problem(args.host, args.port)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from models.export import WeightsError, load_generator
    from pipeline.inference import Colorizer, resolve_device

    try:
        import gradio as gr
    except ImportError:
        print("error: colorize-ui needs the 'ui' extra: pip install -e '.[ui]'", file=sys.stderr)
        return 2
    try:
        device = resolve_device(args.device)
        generator, _ = load_generator(args.weights, device=device)
    except (WeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="colorize-ui-") as work:
        work_dir = Path(work)
        uploads = UploadColorizer(
            Colorizer(generator, device=device, size=args.size), work_dir, args.max_pixels, args.max_bytes
        )
        demo = build_demo(uploads, write_examples(work_dir / "examples"))
        demo.queue(default_concurrency_limit=1)
        theme = gr.themes.Default(
            font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
        )
        try:
            demo.launch(
                server_name=args.host,
                server_port=args.port,
                share=False,
                inbrowser=False,
                ssr_mode=False,
                max_file_size=args.max_bytes,
                allowed_paths=[str(work_dir)],
                theme=theme,
                footer_links=[],
                prevent_thread_lock=True,  # so that "serving" is said once the server listens
            )
        except OSError:
            problem = port_problem(args.host, args.port)  # taken since the check above?
            if problem is None:
                raise
            print(f"error: {problem}", file=sys.stderr)
            return 2
        print(f"colorize-ui: serving {args.weights} on http://{args.host}:{args.port}", flush=True)
        demo.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
