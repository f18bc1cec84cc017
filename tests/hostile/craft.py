"""Hand-made hostile files for the hardening tests: TIFFs whose headers lie.

:func:`tiff_bytes` writes a little-endian baseline TIFF from explicit tag values,
so a test can declare a 65536^2 tile over 20 bytes of data, or a 10^6 x 10^6
level, without a library that would refuse (or allocate) first.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

# TIFF field types
SHORT, LONG, RATIONAL, ASCII = 3, 4, 5, 2


def tiff_bytes(
    width: int,
    height: int,
    *,
    tile: tuple[int, int] | None = None,
    rows_per_strip: int | None = None,
    data: bytes | None = None,
    compression: int = 8,
    resolution: float | None = None,
    resolution_unit: int = 3,  # 2 inch, 3 centimetre
    description: str | None = None,
    samples: int = 3,
    bits: int = 8,
    every_tile: bool = False,
) -> bytes:
    """One IFD, one tile (or strip) holding ``data`` (default: a tiny deflate stream).

    With ``every_tile``, the image has all the tiles its size needs and every one
    of them points at the same ``data``: a small file that decodes to a huge image.
    """
    layout = (width, height, tile, rows_per_strip, data, compression, resolution,
              resolution_unit, description, samples, bits)  # fmt: skip
    if every_tile and tile is not None:
        n = -(-width // tile[0]) * -(-height // tile[1])
        payload_len = len(zlib.compress(b"\0" * 64) if data is None else data)
        data_at = len(_tiff_bytes(*layout, n, 0)) - payload_len  # offsets do not change sizes
        return _tiff_bytes(*layout, n, data_at)
    return _tiff_bytes(*layout, 1, None)


def _tiff_bytes(
    width: int,
    height: int,
    tile: tuple[int, int] | None,
    rows_per_strip: int | None,
    data: bytes | None,
    compression: int,
    resolution: float | None,
    resolution_unit: int,
    description: str | None,
    samples: int,
    bits: int,
    n_tiles: int,
    data_at_known: int | None,
) -> bytes:
    payload = zlib.compress(b"\0" * 64) if data is None else data
    entries: list[tuple[int, int, list[int] | bytes]] = []
    extra = bytearray()
    base = 8  # header
    entries.append((256, LONG, [width]))
    entries.append((257, LONG, [height]))
    entries.append((258, SHORT, [bits] * samples))
    entries.append((259, SHORT, [compression]))
    entries.append((262, SHORT, [2 if samples >= 3 else 1]))
    if description is not None:
        entries.append((270, ASCII, description.encode("latin-1") + b"\0"))
    if tile is None:
        entries.append((273, LONG, [0]))  # strip offset, patched below
    entries.append((277, SHORT, [samples]))
    if tile is None:
        entries.append((278, LONG, [rows_per_strip or height]))
        entries.append((279, LONG, [len(payload)]))
    if resolution is not None:
        entries.append((282, RATIONAL, _rational(resolution)))
        entries.append((283, RATIONAL, _rational(resolution)))
    entries.append((284, SHORT, [1]))
    if resolution is not None:
        entries.append((296, SHORT, [resolution_unit]))
    if tile is not None:
        entries.append((322, LONG, [tile[0]]))
        entries.append((323, LONG, [tile[1]]))
        if data_at_known is None:
            entries.append((324, LONG, [0]))  # tile offset, patched below
        else:
            entries.append((324, LONG, [data_at_known] * n_tiles))
        entries.append((325, LONG, [len(payload)] * n_tiles))
    entries.sort(key=lambda e: e[0])
    ifd_size = 2 + 12 * len(entries) + 4
    extra_at = base + ifd_size
    ifd = bytearray(struct.pack("<H", len(entries)))
    offsets: list[int] = []
    for tag, kind, values in entries:
        if kind == ASCII:
            raw = bytes(values)  # type: ignore[arg-type]
            count = len(raw)
        elif kind == RATIONAL:
            raw = struct.pack(f"<{len(values)}I", *values)  # type: ignore[arg-type]
            count = len(values) // 2  # type: ignore[arg-type]
        else:
            fmt = "H" if kind == SHORT else "I"
            raw = struct.pack(f"<{len(values)}{fmt}", *values)  # type: ignore[arg-type]
            count = len(values)  # type: ignore[arg-type]
        if tag in (273, 324) and data_at_known is None:
            offsets.append(len(ifd) + 8)
        if len(raw) <= 4:
            value = raw.ljust(4, b"\0")
        else:
            value = struct.pack("<I", extra_at + len(extra))
            extra += raw
            if len(extra) % 2:
                extra += b"\0"
        ifd += struct.pack("<HHI", tag, kind, count) + value
    ifd += struct.pack("<I", 0)
    data_at = extra_at + len(extra)
    out = bytearray(b"II*\x00" + struct.pack("<I", base)) + ifd + extra + payload
    for at in offsets:  # the strip or tile offset, now that the data's place is known
        out[base + at : base + at + 4] = struct.pack("<I", data_at)
    return bytes(out)


def _rational(value: float) -> list[int]:
    denominator = 1000
    return [min(2**32 - 1, max(0, round(value * denominator))), denominator]


def write_tiff(path: Path, width: int, height: int, **kwargs: object) -> Path:
    path.write_bytes(tiff_bytes(width, height, **kwargs))  # type: ignore[arg-type]
    return path
