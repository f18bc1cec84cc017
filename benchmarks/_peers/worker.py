"""One benchmark measurement in a fresh process, for one slide viewer.

Run by ``benchmarks/viewer.py`` with the Python of the environment that holds
the tool under test: the project venv for ``ours``, ``raw`` and ``floor``, a
separate venv for each peer (napari-wsi needs zarr 3, napari-lazy-openslide
needs zarr 2.14.2, so they cannot share one). This file therefore imports
nothing from the project at module level and runs on the peers' Python too.

It prints one JSON object on the last line of stdout.

Tools
-----
ours            napari_histattn._napari.reader.napari_get_reader
napari-wsi      napari_wsi.reader.wsi_reader_openslide (its OpenSlide reader
                command; its manifest routes ``*.tif(f)`` to rasterio instead)
lazy-openslide  napari_lazy_openslide.napari_get_reader
raw             openslide.OpenSlide.read_region, the limit for tile reads
floor           a 512 x 512 RGB numpy array: napari's own cost of a first layer

Measures
--------
open    reader call -> layer data ready -> layer added -> first frame drawn
tiles   256-px tiles read through the tool's level arrays (same tiles as raw)
tour    peak RSS while visiting random viewports at random zooms
probe   what the tool returns (levels, dtype, channels, units) and whether
        ``viewer.open(path, plugin=...)`` works
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

TILE = 256
# Plugin names for viewer.open(..., plugin=NAME) in the probe.
PLUGIN_NAMES = {
    "ours": "napari-histattn",
    "napari-wsi": "napari-wsi",
    "lazy-openslide": "napari-lazy-openslide",
}


# ---------------------------------------------------------------------------
# Tool adapters: path -> list of napari layer data tuples (data, kwargs, type)
# ---------------------------------------------------------------------------


def _read_ours(path: str) -> list[tuple]:
    from napari_histattn._napari.reader import napari_get_reader

    reader = napari_get_reader(path)
    if reader is None:
        raise RuntimeError(f"napari-histattn's reader refused {path}")
    return [_as_triple(item) for item in reader(path)]


def _read_napari_wsi(path: str) -> list[tuple]:
    from napari_wsi.reader import wsi_reader_openslide

    reader = wsi_reader_openslide(path)
    if reader is None:
        raise RuntimeError(f"napari-wsi's OpenSlide reader refused {path}")
    return [_as_triple(item) for item in reader(path)]


def _read_lazy_openslide(path: str) -> list[tuple]:
    from napari_lazy_openslide import napari_get_reader

    reader = napari_get_reader(path)
    if reader is None:
        raise RuntimeError(f"napari-lazy-openslide's reader refused {path}")
    return [_as_triple(item) for item in reader(path)]


def _read_floor(path: str) -> list[tuple]:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(512, 512, 3), dtype=np.uint8)
    return [(data, {"name": "floor"}, "image")]


READERS: dict[str, Callable[[str], list[tuple]]] = {
    "ours": _read_ours,
    "napari-wsi": _read_napari_wsi,
    "lazy-openslide": _read_lazy_openslide,
    "floor": _read_floor,
}


def _as_triple(item: Sequence) -> tuple:
    data = item[0]
    kwargs = dict(item[1]) if len(item) > 1 and item[1] else {}
    layer_type = item[2] if len(item) > 2 else "image"
    return data, kwargs, layer_type


def _image_layers(layer_data: list[tuple]) -> list[tuple]:
    """The slide itself: the image layers (ours may add overlays later)."""
    return [t for t in layer_data if t[2] == "image"]


def _levels(data: Any) -> list[Any]:
    if isinstance(data, (list, tuple)):
        return list(data)
    return [data]


# ---------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def hwm_mb() -> float:
    """The kernel's high-water mark of this process's RSS (exact, no sampling)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so a later peak is the tour's."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class RssSampler(threading.Thread):
    """Sample RSS every ``interval`` s; a cross-check of VmHWM and a time series."""

    def __init__(self, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.interval)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self.peak


# ---------------------------------------------------------------------------
# Viewer helpers
# ---------------------------------------------------------------------------


class DrawWatcher:
    """Knows when the canvas has drawn the current view with its final data.

    napari slices a multiscale layer from inside a canvas draw (the camera
    decides the level and corners there), then the new data needs one more
    draw. The frame is final at the last draw after which, for ``quiet``
    seconds of processed Qt events, no draw and no ``set_data`` happens. The
    time reported is that last draw's, not the end of the quiet period.
    """

    def __init__(self, viewer: Any) -> None:
        from qtpy.QtWidgets import QApplication

        self.app = QApplication.instance()
        self.viewer = viewer
        self.draws = 0
        self.last_draw = 0.0
        self.set_data = 0
        canvas = viewer.window._qt_viewer.canvas._scene_canvas
        canvas.events.draw.connect(self._on_draw, position="last")
        self._watched: list[Any] = []

    def watch(self, layer: Any) -> None:
        layer.events.set_data.connect(self._on_set_data)
        self._watched.append(layer)

    def _on_draw(self, event: Any = None) -> None:
        self.draws += 1
        self.last_draw = time.perf_counter()

    def _on_set_data(self, event: Any = None) -> None:
        self.set_data += 1

    def wait(self, since: float, timeout: float, quiet: float) -> tuple[float, bool]:
        """Process events until the view is final; return (last draw time, timed out)."""
        deadline = since + timeout
        draws_seen = -1
        quiet_from = time.perf_counter()
        while True:
            self.app.processEvents()
            now = time.perf_counter()
            state = self.draws + self.set_data
            if state != draws_seen:
                draws_seen = state
                quiet_from = now
            loaded = all(getattr(layer, "loaded", True) for layer in self._watched)
            drew = self.last_draw > since
            if drew and loaded and now - quiet_from >= quiet:
                return self.last_draw, False
            if now > deadline:
                return self.last_draw, True
            time.sleep(0.002)


def make_viewer(canvas_wh: tuple[int, int]) -> tuple[Any, DrawWatcher]:
    """A shown viewer whose canvas has exactly ``canvas_wh`` pixels for every tool.

    The docks' widths depend on the layer type, so a fixed window would give
    each tool a slightly different canvas, hence a different number of tiles
    per view.
    """
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window._qt_viewer.canvas.native.setFixedSize(*canvas_wh)
    viewer.window._qt_window.resize(canvas_wh[0] + 600, canvas_wh[1] + 150)
    watcher = DrawWatcher(viewer)
    watcher.wait(time.perf_counter(), timeout=10.0, quiet=0.3)
    return viewer, watcher


def canvas_size_wh(viewer: Any) -> list[int]:
    return list(viewer.window._qt_viewer.canvas._scene_canvas.size)


def gl_renderer() -> str:
    try:
        from vispy.gloo import gl

        return str(gl.glGetParameter(gl.GL_RENDERER))
    except Exception as exc:  # the renderer string is informative only
        return f"unknown ({type(exc).__name__})"


def not_blank(viewer: Any) -> tuple[bool, float]:
    """Whether the canvas shows an image: luminance spread over the canvas."""
    shot = viewer.screenshot(canvas_only=True, flash=False)
    lum = shot[..., :3].astype(np.float32).mean(axis=-1)
    spread = float(lum.std())
    return spread > 3.0, spread


def add_layers(viewer: Any, layer_data: list[tuple]) -> list[Any]:
    layers = []
    for data, kwargs, layer_type in layer_data:
        layers.append(getattr(viewer, f"add_{layer_type}")(data, **kwargs))
    return layers


# ---------------------------------------------------------------------------
# Measures
# ---------------------------------------------------------------------------


def measure_open(args: argparse.Namespace) -> dict[str, Any]:
    viewer, watcher = make_viewer(args.window)
    rss_viewer = rss_mb()
    read = READERS[args.tool]
    inserted: list[float] = []

    def on_inserted(event: Any) -> None:
        # viewer.open draws inside itself; watch the layer from its insertion on.
        inserted.append(time.perf_counter())
        watcher.watch(event.value)

    viewer.layers.events.inserted.connect(on_inserted)
    with _maybe_profile(args.profile):
        t0 = time.perf_counter()
        if args.via_open:
            # napari's own path: plugin lookup, reader, add_layer.
            layers = [
                lyr for lyr in viewer.open(args.slide, plugin=args.via_open) if lyr.multiscale
            ]
            t1 = t2 = time.perf_counter()
        else:
            layer_data = _image_layers(read(args.slide))
            t1 = time.perf_counter()
            layers = add_layers(viewer, layer_data)
            t2 = time.perf_counter()
        t3, timed_out = watcher.wait(inserted[0], timeout=args.timeout, quiet=0.3)
    ok, spread = not_blank(viewer)
    layer = layers[0]
    return {
        "reader_s": t1 - t0,
        "add_s": t2 - t1,
        "open_s": t2 - t0,
        "layer_inserted_s": inserted[0] - t0,
        "first_frame_s": t3 - t0,
        "first_frame_timed_out": timed_out,
        "screenshot_not_blank": ok,
        "screenshot_lum_std": spread,
        "data_level": int(getattr(layer, "data_level", 0)),
        "rss_viewer_mb": rss_viewer,
        "rss_after_mb": rss_mb(),
        "canvas_wh": canvas_size_wh(viewer),
        "gl_renderer": gl_renderer(),
    }


def _tile_plan(
    slide_path: str, level_ds: float, n: int, seed: int
) -> tuple[int, list[tuple[int, int]], tuple[int, int], float]:
    """Distinct random 256-px tiles of the OpenSlide level nearest ``level_ds``."""
    import openslide

    with openslide.OpenSlide(slide_path) as osr:
        downsamples = list(osr.level_downsamples)
        level = int(np.argmin([abs(np.log(d / level_ds)) for d in downsamples]))
        w, h = osr.level_dimensions[level]
    cols, rows = w // TILE, h // TILE
    rng = np.random.default_rng(seed + level)
    picks = rng.choice(cols * rows, size=min(n, cols * rows), replace=False)
    tiles = [(int(p % cols) * TILE, int(p // cols) * TILE) for p in picks]
    return level, tiles, (w, h), downsamples[level]


def measure_tiles(args: argparse.Namespace) -> dict[str, Any]:
    """Tiles/s through the tool's level arrays, or through OpenSlide itself (raw).

    The slide is opened once (timed as ``setup_s``); then, per level, the same
    distinct random tile-aligned 256-px tiles are read one by one, as napari
    reads a view, and converted to a numpy array. For a tool, every tile is also
    read through a separate ``OpenSlide`` handle (its own tile cache), alternating
    which goes first, so that ``raw_fraction`` compares the two under the same
    load at the same moment; the machine is shared, and separate processes
    minutes apart see different loads.
    """
    import openslide

    out: dict[str, Any] = {"levels": {}}
    t0 = time.perf_counter()
    osr = openslide.OpenSlide(args.slide)
    arrays: list[Any] = []
    if args.tool != "raw":
        arrays = _levels(_image_layers(READERS[args.tool](args.slide))[0][0])
    out["setup_s"] = time.perf_counter() - t0
    for level_ds in args.tile_levels:
        level, tiles, (w, h), ds = _tile_plan(args.slide, level_ds, args.tiles, args.seed)
        entry: dict[str, Any] = {
            "openslide_level": level,
            "downsample": ds,
            "level_wh": [w, h],
            "n_tiles": len(tiles),
        }

        def read_raw(lvl_x: int, lvl_y: int, level: int = level, ds: float = ds) -> None:
            l0_xy = (int(round(lvl_x * ds)), int(round(lvl_y * ds)))
            np.asarray(osr.read_region(l0_xy, level, (TILE, TILE)))

        if args.tool == "raw":
            t1 = time.perf_counter()
            for lvl_x, lvl_y in tiles:
                read_raw(lvl_x, lvl_y)
            tool_s = time.perf_counter() - t1
        else:
            arr = _matching_array(arrays, (h, w))
            if arr is None:
                entry["error"] = f"no level of shape {(h, w)}: {[tuple(a.shape) for a in arrays]}"
                out["levels"][str(level_ds)] = entry
                continue
            tool_s = raw_s = 0.0
            for i, (lvl_x, lvl_y) in enumerate(tiles):
                for which in (0, 1) if i % 2 == 0 else (1, 0):
                    t1 = time.perf_counter()
                    if which == 0:
                        np.asarray(arr[lvl_y : lvl_y + TILE, lvl_x : lvl_x + TILE])
                        tool_s += time.perf_counter() - t1
                    else:
                        read_raw(lvl_x, lvl_y)
                        raw_s += time.perf_counter() - t1
            entry["array_type"] = f"{type(arr).__module__}.{type(arr).__name__}"
            entry["chunks"] = _chunks(arr)
            entry["pixels_match_raw"] = _compare_with_raw(args.slide, level, tiles[:5], arr)
            entry["paired_raw_tiles_per_s"] = len(tiles) / raw_s
            entry["raw_fraction"] = raw_s / tool_s
        entry["read_s"] = tool_s
        entry["tiles_per_s"] = len(tiles) / tool_s
        entry["ms_per_tile"] = 1000 * tool_s / len(tiles)
        out["levels"][str(level_ds)] = entry
    out["rss_end_mb"] = rss_mb()
    return out


def _matching_array(arrays: list[Any], shape_hw: tuple[int, int]) -> Any:
    for arr in arrays:
        if tuple(arr.shape[:2]) == tuple(shape_hw):
            return arr
    return None


def _chunks(arr: Any) -> str:
    chunks = getattr(arr, "chunksize", None) or getattr(arr, "chunks", None)
    if chunks is None:
        return "n/a"
    if isinstance(chunks, tuple) and chunks and isinstance(chunks[0], tuple):
        chunks = tuple(c[0] for c in chunks)
    return "x".join(str(c) for c in chunks)


def _compare_with_raw(
    slide_path: str, level: int, tiles: list[tuple[int, int]], arr: Any
) -> bool | str:
    """Whether the tool's RGB pixels equal OpenSlide's read_region (untimed check)."""
    import openslide

    with openslide.OpenSlide(slide_path) as osr:
        scale = osr.level_downsamples[level]
        for lvl_x, lvl_y in tiles:
            l0_xy = (int(round(lvl_x * scale)), int(round(lvl_y * scale)))
            raw = np.asarray(osr.read_region(l0_xy, level, (TILE, TILE)))[..., :3]
            got = np.asarray(arr[lvl_y : lvl_y + TILE, lvl_x : lvl_x + TILE])[..., :3]
            if got.shape != raw.shape:
                return f"shape {got.shape} vs {raw.shape}"
            if not np.array_equal(got, raw):
                diff = np.abs(got.astype(int) - raw.astype(int))
                return f"max |diff| {int(diff.max())}, mean {float(diff.mean()):.3f}"
    return True


def _viewport_plan(
    n: int, seed: int, l0_wh: tuple[int, int], canvas_wh: Sequence[int]
) -> list[tuple[float, float, float]]:
    """(centre x, centre y) as fractions of the slide, and level-0 px per screen px."""
    rng = np.random.default_rng(seed)
    fit = max(l0_wh[0] / canvas_wh[0], l0_wh[1] / canvas_wh[1])
    plan = []
    for _ in range(n):
        fx, fy = rng.uniform(0.0, 1.0, size=2)
        downsample = float(np.exp(rng.uniform(0.0, np.log(max(fit, 1.0)))))
        plan.append((float(fx), float(fy), downsample))
    return plan


def measure_tour(args: argparse.Namespace) -> dict[str, Any]:
    viewer, watcher = make_viewer(args.window)
    t0 = time.perf_counter()
    layer_data = _image_layers(READERS[args.tool](args.slide))
    layers = add_layers(viewer, layer_data)
    for layer in layers:
        watcher.watch(layer)
    t_first, _ = watcher.wait(t0, timeout=args.timeout, quiet=0.3)
    layer = layers[0]
    level0 = _levels(layer.data)[0]
    l0_wh = (int(level0.shape[1]), int(level0.shape[0]))
    extent = np.asarray(viewer.layers.extent.world)[:, -2:]
    origin = np.asarray(layer.data_to_world((0, 0)))[-2:]
    world_per_px = np.abs(np.asarray(layer.data_to_world((1, 1)))[-2:] - origin)
    canvas_wh = canvas_size_wh(viewer)
    plan = _viewport_plan(args.viewports, args.seed, l0_wh, canvas_wh)

    # napari 0.9 moved the camera to viewer.scene; older napari has viewer.camera.
    scene = getattr(viewer, "scene", None)
    camera = scene.camera if scene is not None else viewer.camera

    baseline = rss_mb()
    hwm_reset = reset_hwm()
    sampler = RssSampler()
    sampler.start()
    times, timeouts, levels = [], 0, []
    for fx, fy, downsample in plan:
        centre_yx = (
            extent[0][0] + fy * (extent[1][0] - extent[0][0]),
            extent[0][1] + fx * (extent[1][1] - extent[0][1]),
        )
        start = time.perf_counter()
        camera.center = centre_yx
        camera.zoom = 1.0 / (downsample * float(world_per_px[1]))
        drawn, timed_out = watcher.wait(start, timeout=args.timeout, quiet=0.15)
        times.append(drawn - start)
        timeouts += int(timed_out)
        levels.append(int(getattr(layer, "data_level", 0)))
    sampled_peak = sampler.stop()
    peak = hwm_mb() if hwm_reset else sampled_peak
    end = rss_mb()
    return {
        "first_frame_s": t_first - t0,
        "rss_baseline_mb": baseline,
        "rss_peak_mb": peak,
        "rss_peak_sampled_mb": sampled_peak,
        "rss_peak_source": "VmHWM after clear_refs" if hwm_reset else "10-ms sampling",
        "rss_end_mb": end,
        "rss_growth_mb": peak - baseline,
        "viewports": len(plan),
        "viewport_s_median": float(np.median(times)),
        "viewport_s_p90": float(np.percentile(times, 90)),
        "viewport_timeouts": timeouts,
        "data_levels_visited": sorted(set(levels)),
        "canvas_wh": canvas_wh,
        "world_per_level0_px": float(world_per_px[1]),
    }


def measure_probe(args: argparse.Namespace) -> dict[str, Any]:
    """What the tool gives napari, and whether napari's own open path works."""
    import napari

    layer_data = _image_layers(READERS[args.tool](args.slide))
    data, kwargs, _ = layer_data[0]
    arrays = _levels(data)
    out: dict[str, Any] = {
        "n_image_layers": len(layer_data),
        "n_levels": len(arrays),
        "level0_shape": list(arrays[0].shape),
        "dtype": str(arrays[0].dtype),
        "array_type": f"{type(arrays[0]).__module__}.{type(arrays[0]).__name__}",
        "chunks": _chunks(arrays[0]),
        "kwargs": sorted(k for k in kwargs if k != "metadata"),
        "scale": [float(s) for s in kwargs.get("scale", [])] or None,
        "affine": "affine" in kwargs,
        "units": _jsonable(kwargs.get("units")),
    }
    plugin = PLUGIN_NAMES.get(args.tool)
    if plugin:
        viewer = napari.Viewer(show=False)
        try:
            t0 = time.perf_counter()
            layers = viewer.open(args.slide, plugin=plugin)
            out["viewer_open_s"] = time.perf_counter() - t0
            out["viewer_open"] = "ok"
            out["viewer_open_scale"] = [float(s) for s in layers[0].scale]
            out["viewer_open_units"] = [str(u) for u in layers[0].units]
            out["viewer_open_rgb"] = bool(layers[0].rgb)
        except Exception as exc:  # record what the peer cannot do
            out["viewer_open"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        finally:
            viewer.close()
    return out


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


@contextlib.contextmanager
def _maybe_profile(path: str | None):
    if not path:
        yield
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        profiler.dump_stats(path)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = [
        "napari",
        "napari-histattn",
        "napari-wsi",
        "napari-lazy-openslide",
        "openslide-python",
        "openslide-bin",
        "zarr",
        "dask",
        "numpy",
        "vispy",
        "PyQt6",
    ]
    out = {}
    for name in names:
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    with contextlib.suppress(Exception):
        import openslide

        out["libopenslide"] = openslide.__library_version__
    out["python"] = sys.version.split()[0]
    return out


MEASURES = {
    "open": measure_open,
    "tiles": measure_tiles,
    "tour": measure_tour,
    "probe": measure_probe,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("measure", choices=[*MEASURES, "versions"])
    parser.add_argument("--tool", choices=[*READERS, "raw"], default="raw")
    parser.add_argument("--slide", default="")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiles", type=int, default=200)
    parser.add_argument(
        "--tile-levels",
        type=lambda s: [float(v) for v in s.split(",")],
        default=[1.0, 8.0],
        help="downsamples to read tiles at (the nearest OpenSlide level is used)",
    )
    parser.add_argument("--viewports", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument(
        "--canvas",
        dest="window",
        type=lambda s: tuple(int(v) for v in s.split("x")),
        default=(1200, 800),
        help="canvas size WxH in screen pixels",
    )
    parser.add_argument(
        "--via-open",
        default=None,
        metavar="PLUGIN",
        help="open: time viewer.open(slide, plugin=PLUGIN) instead of reader + add_image",
    )
    parser.add_argument("--profile", default=None, help="write cProfile stats of open here")
    args = parser.parse_args(argv)

    if args.measure == "versions":
        result: dict[str, Any] = versions()
    else:
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        result = MEASURES[args.measure](args)
        result["wall_s"] = time.perf_counter() - t0
        result["loadavg_1min_start"] = load
        result["loadavg_1min_end"] = os.getloadavg()[0]
    print(json.dumps(result))
    sys.stdout.flush()
    # Skip napari/Qt teardown: it can take seconds and tells us nothing.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
