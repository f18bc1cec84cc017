"""HATNet's region-level self-attention: time and peak memory against the number of regions.

A slide's regions all attend to each other, so the attention matrix is ``R x R`` per
head; :class:`~napari_histattn.models.hatnet.network.SelfAttentionBlock` relies on
PyTorch's fused kernel never holding it. Measured both without a mask (a slide at
inference) and with a padding mask (a training batch, one region padded). Each case runs
in a fresh process (peak RSS of that process),
one block of width 128 with 4 heads under ``torch.inference_mode``. Results go to
``RESULTS.md`` between ``<!-- hatnet-memory:start -->`` and ``<!-- hatnet-memory:end -->``.

    .venv/bin/python benchmarks/hatnet_memory.py [--regions 10000 30000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- hatnet-memory:start -->", "<!-- hatnet-memory:end -->"

CHILD = """
import json, resource, sys, time, torch
from napari_histattn.models.hatnet.network import SelfAttentionBlock
n, masked = int(sys.argv[1]), sys.argv[2] == "masked"
torch.manual_seed(0)
block = SelfAttentionBlock(128, 4).eval()
x = torch.randn(1, n, 128)
mask = None
if masked:
    mask = torch.ones(1, n, dtype=torch.bool)
    mask[0, -1] = False  # one padding region
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
with torch.inference_mode():
    block(x, mask)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_mb": peak / 1024, "before_mb": base / 1024}))
"""


def _case(n: int, masked: bool) -> dict[str, float] | None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(n), "masked" if masked else "plain"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    if done.returncode != 0:
        return None  # killed for memory, or failed
    out: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def main() -> int:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from features import _machine, _write_section

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regions", type=int, nargs="+", default=[3000, 10000, 30000])
    parser.add_argument("--masked-up-to", type=int, default=30000,
                        help="run the masked path only up to this many regions")  # fmt: skip
    args = parser.parse_args()
    machine = _machine()
    lines = [
        START,
        "## HATNet's region self-attention: memory (`benchmarks/hatnet_memory.py`)",
        "",
        f"Machine: {machine}. One `SelfAttentionBlock` (width 128, 4 heads) over R regions "
        "of one slide, `torch.inference_mode`, each case in a fresh process. Matrix: the "
        "size of the R x R x 4 float32 attention a kernel that holds it would need.",
        "",
        "| regions R | matrix | no mask (inference): time | peak RSS | with a padding mask: "
        "time | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for n in args.regions:
        plain = _case(n, False)
        masked = _case(n, True) if n <= args.masked_up_to else None
        matrix_gb = n * n * 4 * 4 / 1e9

        def cell(r: dict[str, float] | None, ran: bool) -> str:
            if r is None:
                return "not run | -" if not ran else "failed | -"
            return f"{r['seconds']:.2f} s | {r['peak_mb']:.0f} MB"

        lines.append(f"| {n:,} | {matrix_gb:.1f} GB | {cell(plain, True)} | "
                     f"{cell(masked, n <= args.masked_up_to)} |")  # fmt: skip
        print(lines[-1], file=sys.stderr)
    lines.append(END)
    text = "\n".join(lines)
    _write_section(text, START, END)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
