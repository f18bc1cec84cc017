"""The Pillow backend: plain images (PNG, JPEG, BMP, ...) such as BreakHis patches, decoded once."""

from __future__ import annotations

import threading
from pathlib import Path
from types import MappingProxyType

import numpy as np

from napari_histattn.errors import SlideError
from napari_histattn.io.backend import (
    _Backend,
    _pil_to_rgb,
    _white,
    scale_to_uint8,
    significant_bits,
)


class _PillowBackend(_Backend):
    name = "pillow"
    vendor = "pillow"

    def __init__(self, path: Path) -> None:
        from PIL import Image

        self._path = path
        self._lock = threading.Lock()
        self._rgb: np.ndarray | None = None
        with Image.open(path) as img:
            self.format = (img.format or "image").lower()
            w, h = img.size
            self.properties = MappingProxyType(
                {
                    f"pillow.{k}": str(v)
                    for k, v in img.info.items()
                    if isinstance(v, (str, int, float, tuple))
                }
            )
        self.level_dimensions = ((int(w), int(h)),)
        self.level_downsamples = (1.0,)
        self.level_tile_sizes = ((int(w), int(h)),)

    def _pixels(self) -> np.ndarray:
        with self._lock:
            if self._rgb is None:
                from PIL import Image

                try:
                    with Image.open(self._path) as img:
                        img.load()
                        if img.mode.startswith("I"):  # 16-bit or 32-bit grey
                            grey = np.asarray(img)
                            top = int(grey.max()) if grey.size else 0
                            bits = significant_bits(min(top, 65535))
                            rgb = np.repeat(scale_to_uint8(grey, bits)[..., None], 3, axis=-1)
                        else:
                            rgb = _pil_to_rgb(img)
                except Exception as exc:
                    raise SlideError(self._path, f"cannot decode the image: {exc}") from exc
                rgb = np.ascontiguousarray(rgb)
                rgb.setflags(write=False)
                self._rgb = rgb
            return self._rgb

    def read(self, level: int, lvl_xy: tuple[int, int], size_wh: tuple[int, int]) -> np.ndarray:
        src = self._pixels()
        x, y = lvl_xy
        w, h = size_wh
        ih, iw = src.shape[:2]
        cx0, cy0, cx1, cy1 = max(x, 0), max(y, 0), min(x + w, iw), min(y + h, ih)
        if cx0 == x and cy0 == y and cx1 == x + w and cy1 == y + h:
            return src[y : y + h, x : x + w].copy()
        out = _white(size_wh)
        if cx0 < cx1 and cy0 < cy1:
            out[cy0 - y : cy1 - y, cx0 - x : cx1 - x] = src[cy0:cy1, cx0:cx1]
        return out

    def close(self) -> None:
        with self._lock:
            self._rgb = None
