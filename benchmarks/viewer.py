"""Slide viewing in napari: napari-histattn against napari-wsi and napari-lazy-openslide.

One command measures, on generated slides of each requested size, side by side
in the same run:

(a) open: the reader call until the layer data are ready, then ``add_image``
    until the layer exists (plus napari's own floor: a 512 x 512 numpy layer);
(b) first frame: from the reader call until the shown canvas (Xvfb) has drawn
    the slide with its final data;
(c) tile throughput: distinct random 256-px tiles at level 0 and a mid level
    through each tool's level arrays, against ``OpenSlide.read_region`` on the
    same tiles (the limit);
(d) memory: RSS after opening, and its peak while visiting random viewports at
    random zooms.

Every measurement runs in a fresh subprocess (``benchmarks/_peers/worker.py``):
ours in this interpreter's environment, each peer in its own venv under
``benchmarks/_work/`` (napari-wsi needs zarr 3, napari-lazy-openslide zarr
2.14.2), created on first use with the same napari, Qt, vispy, dask, numpy and
OpenSlide versions as ours. Results go to ``benchmarks/RESULTS.md`` between
``<!-- viewer:start -->`` and ``<!-- viewer:end -->``, one block per slide size,
and as JSON to ``benchmarks/_work/results/``.

Usage::

    .venv/bin/python benchmarks/viewer.py                 # 20k^2 and 100k^2
    .venv/bin/python benchmarks/viewer.py --sizes 20000   # one size
    .venv/bin/python benchmarks/viewer.py --quick         # smoke run, small slide
    .venv/bin/python benchmarks/viewer.py --setup         # (re)install the peers only
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKER = HERE / "_peers" / "worker.py"
WORK = HERE / "_work"
RESULTS_MD = HERE / "RESULTS.md"
START_MARK = "<!-- viewer:start -->"
END_MARK = "<!-- viewer:end -->"

OURS = "ours"
# napari plugin names, for viewer.open(path, plugin=NAME).
PLUGIN_NAMES = {
    "ours": "napari-histattn",
    "napari-wsi": "napari-wsi",
    "lazy-openslide": "napari-lazy-openslide",
}
PEERS = ("napari-wsi", "lazy-openslide")
TOOLS = (OURS, *PEERS)
TOOL_TITLES = {
    OURS: "napari-histattn (ours)",
    "napari-wsi": "napari-wsi 1.3.0",
    "lazy-openslide": "napari-lazy-openslide 0.3.0",
    "raw": "raw OpenSlide",
}

# Pinned to what ours runs on, so that only the plugin differs.
SHARED_PINS = ("napari", "PyQt6", "vispy", "dask", "numpy", "openslide-python", "openslide-bin")
PEER_PACKAGES = {
    "napari-wsi": ["napari-wsi[openslide]==1.3.0", "psutil"],
    # zarr 2.14.2: newer zarr 2.x returns black tiles, zarr 3 fails at import.
    # numcodecs < 0.16: zarr 2.14.2 imports numcodecs.blosc.cbuffer_sizes, gone in 0.16.
    "lazy-openslide": ["napari-lazy-openslide==0.3.0", "zarr==2.14.2", "numcodecs<0.16", "psutil"],
}

TILE_DOWNSAMPLES = (1.0, 4.0)
SLIDE_MPP = 0.25
SLIDE_SEED = 2024
QUICK_SIZE = 8000

TARGETS = {
    "open_s": 1.0,
    "first_frame_s": 2.0,
    "raw_fraction": 0.90,
    "rss_growth_mb": 300.0,
}


# ---------------------------------------------------------------------------
# Peer environments
# ---------------------------------------------------------------------------


def venv_dir(tool: str) -> Path:
    return WORK / f"venv-{tool}"


def venv_python(tool: str) -> Path:
    return venv_dir(tool) / "bin" / "python"


def peer_requirements(tool: str) -> list[str]:
    pins = []
    for name in SHARED_PINS:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError as err:
            raise SystemExit(
                f"viewer.py: {name} is not installed in {sys.prefix}; run it with the "
                "project venv (.venv/bin/python benchmarks/viewer.py)"
            ) from err
    return [*pins, *PEER_PACKAGES[tool]]


def ensure_peer_env(tool: str, force: bool = False) -> None:
    """Create the peer's venv (or reinstall it when the pins changed)."""
    requirements = peer_requirements(tool)
    spec_file = venv_dir(tool) / "bench-requirements.txt"
    wanted = "\n".join(requirements) + "\n"
    if (
        not force
        and venv_python(tool).exists()
        and spec_file.exists()
        and spec_file.read_text() == wanted
    ):
        return
    print(f"[setup] {tool}: creating {venv_dir(tool)}", flush=True)
    if force and venv_dir(tool).exists():
        shutil.rmtree(venv_dir(tool))
    WORK.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv_dir(tool))], check=True)
    pip = [str(venv_python(tool)), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    print(f"[setup] {tool}: pip install {' '.join(requirements)}", flush=True)
    subprocess.run([*pip, *requirements], check=True)
    spec_file.write_text(wanted)


# ---------------------------------------------------------------------------
# Slides
# ---------------------------------------------------------------------------


def slide_path(size: int) -> Path:
    return WORK / "slides" / f"synthetic-{size}.tiff"


def ensure_slide(size: int, workers: int) -> dict[str, Any]:
    """Generate (once) a ``size`` x ``size`` synthetic slide with our generator."""
    path = slide_path(size)
    info_path = path.with_suffix(".bench.json")
    if path.exists() and info_path.exists():
        return json.loads(info_path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"[slide] generating {path.name} ({size} x {size} px, {workers} workers) ...", flush=True)
    t0 = time.perf_counter()
    info = _generate(path, size, workers)
    seconds = time.perf_counter() - t0
    info.update(
        {
            "path": str(path),
            "size": size,
            "generation_s": seconds,
            "generated": _now(),
            "file_mb": path.stat().st_size / 2**20,
        }
    )
    info_path.write_text(json.dumps(info, indent=1))
    print(f"[slide] {path.name}: {seconds:.0f} s, {info['file_mb']:.0f} MB", flush=True)
    return info


def _generate(path: Path, size: int, workers: int) -> dict[str, Any]:
    """Write the slide with :func:`napari_histattn.io.synthetic.generate_synthetic_slide`.

    The generator writes under temporary names and renames when complete; the
    ``.bench.json`` written after it marks the slide as usable here.
    """
    from napari_histattn.io.synthetic import generate_synthetic_slide

    last = [0.0]

    def report(progress: Any) -> None:
        done, total = getattr(progress, "done", 0), getattr(progress, "total", 0) or 1
        if time.perf_counter() - last[0] > 30 or done == total:
            last[0] = time.perf_counter()
            stage = getattr(progress, "stage", "")
            print(f"[slide]   {stage} {done}/{total}", flush=True)

    generate_synthetic_slide(
        path, size, size, seed=SLIDE_SEED, mpp=SLIDE_MPP, workers=workers, callback=report
    )
    call = (
        f"generate_synthetic_slide(path, {size}, {size}, seed={SLIDE_SEED}, "
        f"mpp={SLIDE_MPP}, workers={workers})"
    )
    return {"command": call, "workers": workers, "seed": SLIDE_SEED}


def describe_slide(path: Path) -> dict[str, Any]:
    import openslide

    with openslide.OpenSlide(str(path)) as osr:
        props = osr.properties
        return {
            "vendor": props.get("openslide.vendor"),
            "level_dimensions": [list(d) for d in osr.level_dimensions],
            "level_downsamples": [round(d, 3) for d in osr.level_downsamples],
            "mpp": [props.get("openslide.mpp-x"), props.get("openslide.mpp-y")],
            "tile": [
                props.get("openslide.level[0].tile-width"),
                props.get("openslide.level[0].tile-height"),
            ],
            "compression": _tiff_compression(path),
        }


def _tiff_compression(path: Path) -> str:
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return str(tif.pages[0].compression.name)
    except Exception as exc:  # informative only
        return f"unknown ({type(exc).__name__})"


# ---------------------------------------------------------------------------
# Running workers
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def display() -> Iterator[str]:
    """An Xvfb display for the shown viewers (napari's canvas needs a GL context).

    ``QT_QPA_PLATFORM=offscreen`` fails inside vispy, so the viewers are real
    windows on a virtual X server.
    """
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        if os.environ.get("DISPLAY"):
            yield os.environ["DISPLAY"]
            return
        raise SystemExit("viewer.py needs Xvfb (apt-get install xvfb) or a DISPLAY")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [xvfb, "-displayfd", str(write_fd), "-screen", "0", "1920x1080x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    with os.fdopen(read_fd) as fh:
        number = fh.readline().strip()
    try:
        yield f":{number}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class Runner:
    display: str
    timeout_s: float
    log: Path

    def run(self, tool: str, measure: str, slide: Path | None, *extra: str) -> dict[str, Any]:
        """Run one worker in a fresh process; its JSON result (or ``{"error": ...}``)."""
        python = str(venv_python(tool)) if tool in PEERS else sys.executable
        worker_tool = "raw" if tool == "raw" else tool
        cmd = [python, str(WORKER), measure, "--tool", worker_tool]
        if slide is not None:
            cmd += ["--slide", str(slide)]
        cmd += list(extra)
        env = dict(os.environ)
        env.update(
            {
                "DISPLAY": self.display,
                "QT_QPA_PLATFORM": "xcb",
                # Default napari settings for every tool, whatever the user set.
                "NAPARI_CONFIG": str(WORK / "napari-settings" / f"{tool}.yaml"),
            }
        )
        (WORK / "napari-settings").mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, env=env, timeout=self.timeout_s, cwd=ROOT
            )
        except subprocess.TimeoutExpired:
            result: dict[str, Any] = {"error": f"timed out after {self.timeout_s:.0f} s"}
        else:
            result = _last_json(proc.stdout)
            if result is None:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                result = {"error": f"exit {proc.returncode}: {' | '.join(tail)[-400:]}"}
        with self.log.open("a") as fh:
            fh.write(json.dumps({"cmd": cmd[1:], "s": time.perf_counter() - t0, **result}) + "\n")
        status = "error: " + result["error"] if "error" in result else "ok"
        print(f"  {measure:6s} {tool:15s} {time.perf_counter() - t0:6.1f} s  {status}", flush=True)
        return result


def _last_json(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                return json.loads(line)
    return None


def via_open_path(tool: str, slide: Path) -> Path:
    """The path napari's ``viewer.open`` gets for ``tool``.

    napari-wsi's manifest sends ``*.tif``/``*.tiff`` to its rasterio reader (an
    optional dependency; even with it, rasterio is not OpenSlide), so napari-wsi
    is given a ``.svs``-named link to the same file, which its manifest routes
    to OpenSlide.
    """
    if tool != "napari-wsi":
        return slide
    link = slide.parent / "links" / (slide.stem + ".svs")
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink() or link.resolve() != slide.resolve():
        link.unlink(missing_ok=True)
        link.symlink_to(slide.resolve())
    return link


def warm_page_cache(path: Path) -> None:
    """Read the slide once so that every tool finds it in the OS page cache."""
    with path.open("rb") as fh:
        while fh.read(1 << 24):
            pass


# ---------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------


def bench_size(
    runner: Runner, slide: Path, repeats: int, tour_repeats: int, n_tiles: int, viewports: int
) -> dict[str, Any]:
    """All measures on one slide; each repeat visits the tools in turn (round robin)."""
    warm_page_cache(slide)
    out: dict[str, Any] = {
        "probe": {},
        "open": {},
        "open_via_viewer": {},
        "floor": [],
        "tiles": {},
        "tour": {},
    }
    levels = ",".join(str(d) for d in TILE_DOWNSAMPLES)
    print("[probe] what each tool returns; also warms imports and the page cache", flush=True)
    for tool in TOOLS:
        out["probe"][tool] = runner.run(tool, "probe", slide)
    for _ in range(repeats):
        out["floor"].append(runner.run("floor", "open", None))
        for tool in TOOLS:
            out["open"].setdefault(tool, []).append(runner.run(tool, "open", slide))
        for tool in TOOLS:
            out["open_via_viewer"].setdefault(tool, []).append(
                runner.run(
                    tool, "open", via_open_path(tool, slide), "--via-open", PLUGIN_NAMES[tool]
                )
            )
        for tool in (*TOOLS, "raw"):
            out["tiles"].setdefault(tool, []).append(
                runner.run(tool, "tiles", slide, "--tiles", str(n_tiles), "--tile-levels", levels)
            )
    for _ in range(tour_repeats):
        for tool in TOOLS:
            out["tour"].setdefault(tool, []).append(
                runner.run(tool, "tour", slide, "--viewports", str(viewports))
            )
    return out


# ---------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------


@dataclass
class Stat:
    median: float
    lo: float
    hi: float
    n: int

    def fmt(self, digits: int, percent: bool = False) -> str:
        def one(v: float) -> str:
            if percent:
                return f"{100 * v:.0f}%"
            if v != 0 and abs(v) < 10 ** (1 - digits):
                return f"{v:.2g}"
            return f"{v:.{digits}f}"

        if self.n == 1:
            return one(self.median)
        return f"{one(self.median)} ({one(self.lo)}–{one(self.hi)})"


def stat(runs: Sequence[dict[str, Any]], get: Callable[[dict[str, Any]], Any]) -> Stat | None:
    values = []
    for run in runs:
        if "error" in run:
            continue
        with contextlib.suppress(KeyError, TypeError):
            value = get(run)
            if value is not None:
                values.append(float(value))
    if not values:
        return None
    return Stat(statistics.median(values), min(values), max(values), len(values))


def _errors(runs: Sequence[dict[str, Any]]) -> list[str]:
    return [run["error"] for run in runs if "error" in run]


@dataclass
class Row:
    label: str
    key: str
    digits: int
    better: str  # "lower" or "higher"
    target: str
    target_ok: Callable[[float], bool] | None


def summarise(data: dict[str, Any]) -> dict[str, dict[str, Stat | None]]:
    """Per metric, per tool: median and range over the repeats."""
    res: dict[str, dict[str, Stat | None]] = {}

    def put(key: str, tool: str, value: Stat | None) -> None:
        res.setdefault(key, {})[tool] = value

    for tool in TOOLS:
        runs = data["open"].get(tool, [])
        put("reader_s", tool, stat(runs, lambda r: r["reader_s"]))
        put("add_s", tool, stat(runs, lambda r: r["add_s"]))
        put("open_s", tool, stat(runs, lambda r: r["open_s"]))
        put("first_frame_s", tool, stat(runs, lambda r: r["first_frame_s"]))
        put("rss_open_mb", tool, stat(runs, lambda r: r["rss_after_mb"]))
        via = data.get("open_via_viewer", {}).get(tool, [])
        put("via_open_s", tool, stat(via, lambda r: r["open_s"]))
        put("via_first_frame_s", tool, stat(via, lambda r: r["first_frame_s"]))
        tours = data["tour"].get(tool, [])
        put("rss_baseline_mb", tool, stat(tours, lambda r: r["rss_baseline_mb"]))
        put("rss_peak_mb", tool, stat(tours, lambda r: r["rss_peak_mb"]))
        put("rss_growth_mb", tool, stat(tours, lambda r: r["rss_growth_mb"]))
        put("viewport_s", tool, stat(tours, lambda r: r["viewport_s_median"]))
    for tool in (*TOOLS, "raw"):
        runs = data["tiles"].get(tool, [])
        for ds in TILE_DOWNSAMPLES:
            put(
                f"tiles_{ds:g}",
                tool,
                stat(runs, lambda r, ds=ds: r["levels"][str(ds)]["tiles_per_s"]),
            )
    put("open_s", "raw", stat(data["tiles"].get("raw", []), lambda r: r["setup_s"]))
    floor = data.get("floor", [])
    put("floor_add_s", "floor", stat(floor, lambda r: r["add_s"]))
    put("floor_first_frame_s", "floor", stat(floor, lambda r: r["first_frame_s"]))
    for tool in TOOLS:
        runs = data["tiles"].get(tool, [])
        for ds in TILE_DOWNSAMPLES:
            put(
                f"raw_fraction_{ds:g}",
                tool,
                stat(runs, lambda r, ds=ds: r["levels"][str(ds)]["raw_fraction"]),
            )
    return res


def rows() -> list[Row]:
    out = [
        Row("Reader call → layer data ready (s)", "reader_s", 3, "lower", "", None),
        Row("add_image → layer exists (s)", "add_s", 3, "lower", "", None),
        Row(
            "**Open** = reader + add_image (s)",
            "open_s",
            3,
            "lower",
            "< 1 s",
            lambda v: v < TARGETS["open_s"],
        ),
        Row(
            "**First frame** drawn, from the reader call (s)",
            "first_frame_s",
            3,
            "lower",
            "< 2 s",
            lambda v: v < TARGETS["first_frame_s"],
        ),
        Row(
            "`viewer.open(path, plugin=…)` → layer exists (s)¹",
            "via_open_s",
            3,
            "lower",
            "",
            None,
        ),
        Row("… first frame drawn (s)¹", "via_first_frame_s", 3, "lower", "", None),
    ]
    for ds in TILE_DOWNSAMPLES:
        name = "level 0" if ds == 1 else f"downsample-{ds:g} level"
        out.append(Row(f"Tiles/s, {name}", f"tiles_{ds:g}", 0, "higher", "", None))
        out.append(
            Row(
                f"**Throughput as % of raw OpenSlide**, {name} (paired, same process)",
                f"raw_fraction_{ds:g}",
                2,
                "higher",
                "≥ 90%",
                lambda v: v >= TARGETS["raw_fraction"],
            )
        )
    out += [
        Row("RSS after open + first frame (MB)", "rss_open_mb", 0, "lower", "", None),
        Row("RSS before the viewport tour (MB)", "rss_baseline_mb", 0, "lower", "", None),
        Row("Peak RSS during the tour (MB)", "rss_peak_mb", 0, "lower", "", None),
        Row(
            "**RSS growth** over the tour (MB)",
            "rss_growth_mb",
            0,
            "lower",
            "< 300 MB",
            lambda v: v < TARGETS["rss_growth_mb"],
        ),
        Row("Median time per viewport until drawn (s)", "viewport_s", 3, "lower", "", None),
    ]
    return out


def verdict(row: Row, values: dict[str, Stat | None]) -> str:
    """'yes' when ours meets the target (if any) and no peer's median beats ours."""
    mine = values.get(OURS)
    if mine is None:
        return "no data"
    misses = []
    if row.target_ok is not None and not row.target_ok(mine.median):
        misses.append("target missed")
    for peer in PEERS:
        theirs = values.get(peer)
        if theirs is None:
            continue
        if (
            (mine.median > theirs.median)
            if row.better == "lower"
            else (mine.median < theirs.median)
        ):
            misses.append(f"{peer} better")
    return "yes" if not misses else "**no**: " + ", ".join(misses)


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import psutil

    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    os_name = platform.platform()
    with contextlib.suppress(OSError), open("/etc/os-release") as fh:
        for line in fh:
            if line.startswith("PRETTY_NAME="):
                os_name = (
                    f"{line.split('=', 1)[1].strip().strip(chr(34))} (kernel {platform.release()})"
                )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gb": psutil.virtual_memory().total / 2**30,
        "os": os_name,
        "python": platform.python_version(),
        "commit": commit or "unknown",
    }


def load_snapshot() -> dict[str, Any]:
    """System load and the busiest other processes: the machine is shared."""
    import psutil

    me = os.getpid()
    procs = list(psutil.process_iter(["pid", "name", "cmdline"]))
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)
    time.sleep(2.0)
    busy = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            pct = p.cpu_percent(None)
            if p.pid != me and pct >= 20:
                busy.append(
                    f"{pct:.0f}% {_short_command(p.info.get('cmdline'), p.info.get('name'))}"
                )
    return {"loadavg": list(os.getloadavg()), "busy_processes": busy}


def _short_command(cmdline: Sequence[str] | None, name: str | None) -> str:
    """``python -m pytest tests/x.py ...`` -> ``pytest tests/x.py``: enough to say what it is."""
    args = list(cmdline or [name or "?"])
    if "-c" in args:
        return f"{Path(args[0]).name} -c …"
    words = [w for w in args if not w.startswith("-")]
    if words and Path(words[0]).name.startswith("python") and len(words) > 1:
        words = words[1:]
    words[0] = Path(words[0]).name
    return " ".join(" ".join(words[:2]).split())[:50]


def _fmt_stat(value: Stat | None, digits: int, pct: bool = False) -> str:
    return "—" if value is None else value.fmt(digits, pct)


def render_size(record: dict[str, Any]) -> str:
    size = record["size"]
    summary = summarise(record["data"])
    slide = record["slide"]
    lines = [
        f"<!-- viewer:size={size}:start -->",
        f"### {size:,} × {size:,} px".replace(",", " ") + f" ({_mpx(slide)})",
        "",
        f"Command: `{record['command']}`.",
        "",
        f"Measured {record['date']} on commit `{record['machine']['commit']}`; "
        f"{record['repeats']} fresh processes per tool for open/first frame/tiles, "
        f"{record['tour_repeats']} for the tour; median (min–max). "
        f"Load average (1 min) during the run: {_load_range(record)}.",
        "",
        f"Slide: {slide.get('vendor')} {slide.get('compression')}, tiles "
        f"{'×'.join(str(t) for t in slide.get('tile', []))}, mpp {slide['mpp'][0]}, "
        f"{len(slide['level_dimensions'])} levels (downsamples "
        f"{', '.join(f'{d:g}' for d in slide['level_downsamples'])}), "
        f"{record['slide_info'].get('file_mb', 0):.0f} MB; generated by "
        f"`{record['slide_info'].get('command', '?')}` in "
        f"{record['slide_info'].get('generation_s', float('nan')):.0f} s.",
        "",
        "| Metric | ours | napari-wsi | napari-lazy-openslide | raw OpenSlide | target | met? |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows():
        values = summary.get(row.key, {})
        pct = row.key.startswith("raw_fraction")
        cells = [_fmt_stat(values.get(t), row.digits, pct) for t in (*TOOLS, "raw")]
        lines.append(
            f"| {row.label} | "
            + " | ".join(cells)
            + f" | {row.target or ''} | {verdict(row, values)} |"
        )
    floor_add = summary.get("floor_add_s", {}).get("floor")
    floor_frame = summary.get("floor_first_frame_s", {}).get("floor")
    lines += [
        "",
        "¹ napari's own open path, plugin lookup included; napari-wsi is given a `.svs`-named "
        "link to the slide, because its manifest sends `.tiff` to its rasterio reader.",
        "",
        f"napari's own floor (a 512 × 512 RGB numpy array into a fresh shown viewer): "
        f"add_image {_fmt_stat(floor_add, 3)} s, first frame {_fmt_stat(floor_frame, 3)} s.",
        "",
    ]
    lines += _capabilities(record)
    lines += _errors_block(record)
    lines.append(f"<!-- viewer:size={size}:end -->")
    return "\n".join(lines)


def _mpx(slide: dict[str, Any]) -> str:
    w, h = slide["level_dimensions"][0]
    return f"{w * h / 1e9:.2f} gigapixels" if w * h >= 1e9 else f"{w * h / 1e6:.0f} megapixels"


def _load_range(record: dict[str, Any]) -> str:
    loads = []
    for measure in ("open", "tiles", "tour"):
        for runs in record["data"].get(measure, {}).values():
            for run in runs:
                for key in ("loadavg_1min_start", "loadavg_1min_end"):
                    if key in run:
                        loads.append(run[key])
    if not loads:
        return "unknown"
    return f"{min(loads):.1f}–{max(loads):.1f} on {record['machine']['logical_cores']} cores"


def _capabilities(record: dict[str, Any]) -> list[str]:
    probe = record["data"].get("probe", {})
    tiles = record["data"].get("tiles", {})
    lines = [
        "| What napari gets | ours | napari-wsi | napari-lazy-openslide |",
        "|---|---|---|---|",
    ]

    def cell(tool: str, fn: Callable[[dict[str, Any]], str]) -> str:
        p = probe.get(tool, {})
        if "error" in p:
            return "error: " + p["error"][:80]
        try:
            return fn(p)
        except (KeyError, TypeError, IndexError):
            return "—"

    def units(p: dict[str, Any]) -> str:
        scale = p.get("viewer_open_scale") or p.get("scale")
        if p.get("viewer_open") != "ok" and not p.get("scale"):
            return "pixels"
        if scale and abs(scale[-1] - 1.0) > 1e-9:
            return f"µm (scale {scale[-1]:g})"
        return "pixels"

    def first_tile_check(tool: str) -> str:
        runs = tiles.get(tool, [])
        for run in runs:
            for entry in run.get("levels", {}).values():
                if "pixels_match_raw" in entry:
                    return (
                        "yes"
                        if entry["pixels_match_raw"] is True
                        else str(entry["pixels_match_raw"])
                    )
        return "—"

    spec = [
        ("Levels, dtype", lambda p: f"{p['n_levels']} × {p['dtype']}"),
        (
            "Channels",
            lambda p: (
                "RGB"
                if p["level0_shape"][-1] == 3
                else f"{p['level0_shape'][-1]} (RGBA)"
                if p["level0_shape"][-1] == 4
                else str(p["level0_shape"][-1])
            ),
        ),
        (
            "Level array type",
            lambda p: f"`{p['array_type'].rsplit('.', 1)[-1]}` chunks {p['chunks']}",
        ),
        ("Units from the reader", units),
        (
            "`viewer.open(slide.tiff, plugin=…)`",
            lambda p: (
                "works"
                if p.get("viewer_open") == "ok"
                else f"fails: {p.get('viewer_open', '—')[:90]}"
            ),
        ),
    ]
    for label, fn in spec:
        lines.append(f"| {label} | " + " | ".join(cell(t, fn) for t in TOOLS) + " |")
    lines.append(
        "| RGB pixels equal OpenSlide's `read_region` | "
        + " | ".join(first_tile_check(t) for t in TOOLS)
        + " |"
    )
    lines.append("")
    return lines


def _errors_block(record: dict[str, Any]) -> list[str]:
    errors = []
    for measure in ("probe", "open", "open_via_viewer", "tiles", "tour"):
        for tool, runs in record["data"].get(measure, {}).items():
            runs = runs if isinstance(runs, list) else [runs]
            for err in _errors(runs):
                errors.append(f"- {measure} / {tool}: {err}")
    if not errors:
        return []
    return ["Failed runs (left out of the medians):", "", *errors, ""]


def render_header(record: dict[str, Any], command: str) -> str:
    m = record["machine"]
    v = record["versions"]
    ours, wsi, los = v.get(OURS, {}), v.get("napari-wsi", {}), v.get("lazy-openslide", {})
    gl = next(
        (
            r.get("gl_renderer")
            for runs in record["data"]["open"].values()
            for r in runs
            if "gl_renderer" in r
        ),
        "unknown",
    )
    canvas = next(
        (
            r.get("canvas_wh")
            for runs in record["data"]["open"].values()
            for r in runs
            if "canvas_wh" in r
        ),
        None,
    )
    busy = [" ".join(b.split())[:60] for b in record.get("load", {}).get("busy_processes", [])]
    busy = busy or ["none above 20% CPU"]
    return "\n".join(
        [
            "## Viewer",
            "",
            "Slide viewing in napari: napari-histattn against the peers pathologists already "
            "use, side by side in the same run. Regenerate with:",
            "",
            "```",
            ".venv/bin/python benchmarks/viewer.py",
            "```",
            "",
            f"Machine (latest run, {record['date']}): {m['cpu']}, {m['logical_cores']} logical "
            f"cores ({m['physical_cores']} physical), {m['ram_gb']:.0f} GiB RAM, {m['os']}, "
            f"Python {m['python']}; GL {gl} under Xvfb, canvas "
            f"{'×'.join(map(str, canvas or []))} px.",
            "",
            "Versions: napari "
            f"{ours.get('napari', '?')}, PyQt6 {ours.get('PyQt6', '?')}, vispy {ours.get('vispy', '?')}, "
            f"dask {ours.get('dask', '?')}, numpy {ours.get('numpy', '?')}, openslide-python "
            f"{ours.get('openslide-python', '?')}, libopenslide {ours.get('libopenslide', '?')} "
            f"(openslide-bin {ours.get('openslide-bin', '?')}) in every environment; "
            f"napari-histattn {ours.get('napari-histattn', '?')}; "
            f"napari-wsi {wsi.get('napari-wsi', '?')} with zarr {wsi.get('zarr', '?')}; "
            f"napari-lazy-openslide {los.get('napari-lazy-openslide', '?')} with zarr "
            f"{los.get('zarr', '?')}.",
            "",
            "The machine was shared with other work while measuring (busy processes at the "
            f"start of the latest run: {'; '.join(busy[:6])}), so wall times are inflated and "
            "noisy; compare the columns, which were measured interleaved in the same run.",
            "",
            METHOD,
        ]
    )


METHOD = """How it is measured (`benchmarks/_peers/worker.py`): every number comes from a fresh
process with a shown napari viewer on Xvfb (llvmpipe software GL), canvas fixed in size for
every tool. *Open* is the tool's reader call until the layer data exist, plus
`viewer.add_image` until the layer exists. *First frame* runs from the reader call until the
last canvas draw after which no new data arrive (napari slices a multiscale layer inside a
draw, so the final data need a second draw); a screenshot then checks the canvas is not blank.
*Tiles/s* reads distinct random tile-aligned 256-px tiles one at a time through each tool's
level arrays (`np.asarray(level[y:y+256, x:x+256])`, as napari does), against
`OpenSlide.read_region` of the same tiles; the slide file is in the OS page cache for every
tool. *RSS* is the process's resident set: after opening, then its peak (the kernel's VmHWM,
reset before the tour) while the camera visits random viewports (uniform centres, log-uniform
zoom from 1 to the fit-to-window downsample; the same sequence for every tool), each waited
on until drawn. The peers are called through their reader functions (napari-wsi's
`wsi_reader_openslide`, napari-lazy-openslide's `napari_get_reader`) with their default
settings, ours through `napari_histattn._napari.reader.napari_get_reader`; napari's defaults
(including its dask cache) are left on for everyone."""


def write_results(records: list[dict[str, Any]], command: str, path: Path, notes: str) -> None:
    """Replace the viewer section's header and the blocks of the sizes measured now."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if START_MARK in text and END_MARK in text:
        before, rest = text.split(START_MARK, 1)
        section, after = rest.split(END_MARK, 1)
    else:
        before, section, after = text.rstrip() + "\n\n", "", "\n"
    blocks = dict(
        (int(m.group(1)), m.group(0))
        for m in re.finditer(
            r"<!-- viewer:size=(\d+):start -->.*?<!-- viewer:size=\1:end -->", section, re.S
        )
    )
    for record in records:
        blocks[record["size"]] = render_size(record)
    notes_match = re.search(
        r"<!-- viewer:notes:start -->.*?<!-- viewer:notes:end -->", section, re.S
    )
    notes_block = notes or (notes_match.group(0) if notes_match else "")
    latest = max(records, key=lambda r: r["date"])
    body = [render_header(latest, command), ""]
    body += [blocks[size] + "\n" for size in sorted(blocks)]
    if notes_block:
        body.append(notes_block)
    new_section = "\n".join(body).rstrip() + "\n"
    path.write_text(before + START_MARK + "\n" + new_section + END_MARK + after)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        default="20000,100000",
        help="slide sides in pixels, comma-separated (default: 20000,100000)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: one {QUICK_SIZE}^2 slide, 1 repeat, 50 tiles, 10 viewports; "
        "writes benchmarks/_work/RESULTS-quick.md instead of RESULTS.md",
    )
    parser.add_argument("--setup", action="store_true", help="(re)install the peer venvs and exit")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per tool (3)")
    parser.add_argument("--tour-repeats", type=int, default=3, help="tours per tool (3)")
    parser.add_argument("--tiles", type=int, default=200, help="tiles per level (200)")
    parser.add_argument("--viewports", type=int, default=100, help="viewports per tour (100)")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="slide generation workers"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per worker process")
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to write")
    parser.add_argument(
        "--slide",
        type=Path,
        default=None,
        help="benchmark this existing slide instead of generated ones (results are not "
        "stored as a standard size)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="re-render RESULTS.md from the JSON of the last runs of --sizes, measuring nothing",
    )
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    if args.slide is not None:
        import openslide

        with openslide.OpenSlide(str(args.slide)) as osr:
            args.sizes = [max(osr.dimensions)]
    if args.quick:
        args.sizes = [QUICK_SIZE] if args.slide is None else args.sizes
        args.repeats, args.tour_repeats, args.tiles, args.viewports = 1, 1, 50, 10
    if args.out is None:
        args.out = WORK / "RESULTS-quick.md" if args.quick or args.slide else RESULTS_MD
    return args


def main(argv: Sequence[str] | None = None) -> int:
    # A plain `kill` still stops Xvfb and records nothing half-written.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parse_args(argv)
    command = ".venv/bin/python benchmarks/viewer.py" + (
        ""
        if argv is None and len(sys.argv) == 1
        else " " + " ".join(sys.argv[1:] if argv is None else argv)
    )
    results_dir = WORK / "results"
    results_dir.mkdir(parents=True, exist_ok=True)

    if args.report_only:
        records = [
            json.loads((results_dir / f"viewer-{size}.json").read_text()) for size in args.sizes
        ]
        write_results(records, records[-1].get("command", command), args.out, notes="")
        print(f"wrote {args.out}")
        return 0

    for tool in PEERS:
        ensure_peer_env(tool, force=args.setup)
    if args.setup:
        return 0

    versions = {}
    for tool in TOOLS:
        python = str(venv_python(tool)) if tool in PEERS else sys.executable
        proc = subprocess.run([python, str(WORKER), "versions"], capture_output=True, text=True)
        versions[tool] = _last_json(proc.stdout) or {"error": proc.stderr[-300:]}

    records = []
    log = results_dir / f"runs-{_dt.datetime.now():%Y%m%d-%H%M%S}.jsonl"
    with display() as disp:
        runner = Runner(display=disp, timeout_s=args.timeout, log=log)
        for size in args.sizes:
            if args.slide is not None:
                slide = args.slide.resolve()
                slide_info = {"command": f"given with --slide {args.slide}"}
            else:
                slide_info = ensure_slide(size, args.workers)
                slide = slide_path(size)
            print(f"[bench] {slide.name}", flush=True)
            record = {
                "size": size,
                "date": _now(),
                "command": command,
                "machine": machine(),
                "load": load_snapshot(),
                "versions": versions,
                "slide": describe_slide(slide),
                "slide_info": slide_info,
                "repeats": args.repeats,
                "tour_repeats": args.tour_repeats,
                "n_tiles": args.tiles,
                "viewports": args.viewports,
            }
            record["data"] = bench_size(
                runner, slide, args.repeats, args.tour_repeats, args.tiles, args.viewports
            )
            if not args.quick and args.slide is None:
                (results_dir / f"viewer-{size}.json").write_text(json.dumps(record, indent=1))
            records.append(record)
            write_results(records, command, args.out, notes="")
            print(f"[bench] {size}: wrote {args.out}", flush=True)
    print(render_size(records[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
