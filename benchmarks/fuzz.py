"""Fuzzing campaign: damaged slides, checkpoints and GeoJSON, and how each run ended.

Uses the harness of ``tests/fuzz/`` (mutators, a worker under a memory cap, a
timeout): ``PER_SEED`` mutants of every seed file (a generated pyramid TIFF, a
PNG, the team's small SVS, generic TIFF and DICOM slides when ``../shared/data``
is there, a tiny A-MIL checkpoint, the generator's GeoJSON), each opened and read,
loaded, imported or classified. ``--against DIR`` runs the same mutants (same
seed) through another checkout, for example the commit before the hardening
issue, so the table shows what changed. Results go to ``RESULTS.md`` between
``<!-- fuzz:start -->`` and ``<!-- fuzz:end -->``.

    .venv/bin/python benchmarks/fuzz.py [--per-seed 100] [--against /path/to/old/checkout]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))
sys.path.insert(0, str(ROOT / "benchmarks"))
START, END = "<!-- fuzz:start -->", "<!-- fuzz:end -->"

import harness  # noqa: E402

OUTCOMES = ("ok", "refused", "traceback", "crash", "hang")


def _commit(path: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(path), "log", "-1", "--format=%h %s"], capture_output=True, text=True
    )
    text = done.stdout.strip()
    return (text if len(text) <= 60 else text[:57].rsplit(" ", 1)[0] + " ...") or str(path)


def _row(label: str, counts: Counter[str], seconds: float) -> str:
    cells = " | ".join(str(counts.get(k, 0)) for k in OUTCOMES)
    return f"| {label} | {sum(counts.values())} | {cells} | {seconds:.0f} s |"


def main() -> int:
    from features import _machine, _write_section

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-seed", type=int, default=100)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--against", type=Path, help="another checkout to run the same mutants")
    args = parser.parse_args()
    machine = _machine()
    with tempfile.TemporaryDirectory(prefix="histattn-fuzz-") as tmp:
        seeds = harness.make_seeds(Path(tmp) / "seeds", ROOT.parent / "shared" / "data" / "slides")
        mutants = harness.all_mutants(seeds, Path(tmp) / "mutants", args.per_seed, seed=args.seed)
        by_kind = Counter(m.kind for m in mutants)
        runs = [("this checkout: " + _commit(ROOT), None)]
        if args.against is not None:
            runs.append((f"`--against` {_commit(args.against)}", str(args.against)))
        rows, bad_lines = [], []
        for label, pythonpath in runs:
            started = time.perf_counter()
            counts, bad = harness.campaign(mutants, timeout_s=60, pythonpath=pythonpath)
            rows.append(_row(label, counts, time.perf_counter() - started))
            print(label, dict(counts), file=sys.stderr)
            kinds = Counter((b["outcome"], b.get("error", "").split(":")[0]) for b in bad)
            bad_lines += [
                f"- {label.split(':')[0]}: {n} x {outcome} ({what})"
                for (outcome, what), n in kinds.most_common(8)
            ]
            (ROOT / "benchmarks" / "_work").mkdir(exist_ok=True)
            (ROOT / "benchmarks" / "_work" / "fuzz-bad.json").write_text(json.dumps(bad, indent=1))
    seeds_text = ", ".join(f"{n} {k}" for k, n in sorted(by_kind.items()))
    lines = [
        START,
        "## Fuzzing (`benchmarks/fuzz.py`)",
        "",
        f"Machine: {machine}. {len(mutants)} mutants ({seeds_text} jobs; seed {args.seed}, "
        f"{args.per_seed} per seed file): truncation, bit flips in the first 4 KiB and in the "
        "data, TIFF tag values set to 0/1/65536/2^31/2^32-1 and the like, checkpoint and "
        "GeoJSON JSON values replaced by NaN, Inf, 1e308, 2^70, strings, deep nesting. Each "
        "runs in a worker with 3 GiB of address space above its imports and a 60 s timeout. "
        "`refused` is our own error (the file is named and why); `traceback`, `crash` and "
        "`hang` are bugs.",
        "",
        "| code | mutants | " + " | ".join(OUTCOMES) + " | time |",
        "|---|---|" + "---|" * len(OUTCOMES) + "---|",
        *rows,
        "",
        *(bad_lines or ["No mutant crashed, hung or ended in a raw traceback."]),
        END,
    ]
    text = "\n".join(lines)
    _write_section(text, START, END)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
