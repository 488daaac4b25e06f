"""The GPU's JPEG engines while a benchmark runs: did the hardware JPEG decoder take part?

nvJPEG hands a share of each batch (`hw_decoder_load`) to the chip's hardware JPEG decoder (NVJPG
engines: A100, H100, H200) when the library, driver and image allow it, and silently decodes on the
CUDA cores otherwise. NVML reports the engines' utilisation (`nvmlDeviceGetJpgUtilization`, percent
of the sampling period, the `jpg` column of `nvidia-smi dmon`); `JpegEngineMonitor` samples it in a
background thread and gives each labelled span (one loader source's timed seconds) its mean and
maximum. It needs `pynvml` (the `nvidia-ml-py` package); where that or the reading is missing,
`available` is False and `reason` says why, and the spans report nothing.
"""

from __future__ import annotations

import threading
import time


class JpegEngineMonitor:
    """Samples NVJPG utilisation (percent) of GPU `index` every `interval` seconds during spans."""

    def __init__(self, index: int = 0, interval: float = 0.05) -> None:
        self.interval = interval
        self.available, self.reason = False, ""
        self._samples: list[int] = []
        self._active = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._read = lambda: int(pynvml.nvmlDeviceGetJpgUtilization(self._handle)[0])
            self._read()
        except Exception as error:  # no pynvml, no driver, or a chip/driver without the reading
            self.reason = f"NVML JPEG utilisation unavailable ({type(error).__name__}: {error})"
            return
        self.available = True
        self._thread = threading.Thread(target=self._sample, name="jpeg-engine-monitor", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            if self._active.wait(timeout=0.2):
                try:
                    value = self._read()
                except Exception:  # a failed read is a missing sample, not a failed benchmark
                    value = None
                if value is not None:
                    with self._lock:
                        self._samples.append(value)
                time.sleep(self.interval)

    def begin(self) -> None:
        """Start a span: samples taken from now on count toward it."""
        with self._lock:
            self._samples = []
        self._active.set()

    def end(self) -> dict | None:
        """End the span: {"mean_percent", "max_percent", "samples"}, or None without NVML."""
        self._active.clear()
        if not self.available:
            return None
        with self._lock:
            samples = list(self._samples)
        if not samples:
            return {"mean_percent": None, "max_percent": None, "samples": 0}
        return {
            "mean_percent": round(sum(samples) / len(samples), 1),
            "max_percent": max(samples),
            "samples": len(samples),
        }

    def close(self) -> None:
        self._stop.set()
        self._active.clear()
