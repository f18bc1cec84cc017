"""The fuzz harness in CI: damaged copies of slides, checkpoints and GeoJSON never crash,
hang, or end in a raw traceback. ``benchmarks/fuzz.py`` runs a larger campaign."""

from __future__ import annotations

import os
from pathlib import Path

import harness
import pytest

PER_SEED = int(os.environ.get("HISTATTN_FUZZ_PER_SEED", "20"))


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    # The team's small real slides join the seeds when ../shared/data is there.
    shared = os.environ.get("HISTATTN_SHARED_DATA")
    data = Path(shared) if shared else Path(__file__).resolve().parents[3] / "shared" / "data"
    return harness.make_seeds(tmp_path_factory.mktemp("fuzz-seeds"), data / "slides")


@pytest.mark.slow
def test_no_mutant_crashes_hangs_or_tracebacks(seeds, tmp_path: Path) -> None:
    mutants = harness.all_mutants(seeds, tmp_path / "mutants", PER_SEED, seed=2026)
    assert len(mutants) >= 5 * PER_SEED
    counts, bad = harness.campaign(mutants, timeout_s=60)
    assert sum(counts.values()) == len(mutants)
    assert counts["refused"] > 0  # the mutations do reach our checks
    assert not bad, "\n".join(f"{b['outcome']} {b['how']}: {b.get('error')}" for b in bad[:20])


def test_the_harness_sees_a_crash_a_hang_and_a_traceback(tmp_path: Path) -> None:
    """The runner must tell the outcomes apart, or a green run means nothing."""
    runner = harness.Runner(timeout_s=20)
    try:
        fine = tmp_path / "fine.geojson"
        fine.write_text('{"type": "FeatureCollection", "features": []}')
        assert runner.run(harness.Mutant("geojson", fine, "fine"))["outcome"] == "ok"
        bad = tmp_path / "bad.geojson"
        bad.write_text("{not json")
        assert runner.run(harness.Mutant("geojson", bad, "bad"))["outcome"] == "refused"
        broken = harness.Mutant("classify", fine, "no checkpoint named")  # a KeyError inside
        assert runner.run(broken)["outcome"] == "traceback"
        odd = harness.Mutant("nonsense-kind", fine, "unknown job")  # the worker exits
        assert runner.run(odd)["outcome"] == "crash"
        assert runner.run(harness.Mutant("geojson", fine, "restarted"))["outcome"] == "ok"
    finally:
        runner.close()
    slow = harness.Runner(timeout_s=0.001)
    try:
        assert slow.run(harness.Mutant("geojson", fine, "too slow"))["outcome"] == "hang"
    finally:
        slow._stop()
