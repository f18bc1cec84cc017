"""``histattn batch`` on Dask: a local cluster, an existing cluster, a bad slide, a killed
worker, resuming; and how a local cluster is sized."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_histattn.cli import main
from napari_histattn.inference.cohort import ClusterSpec, local_plan

GiB = 2**30


def test_a_local_cluster_is_sized_to_the_machine() -> None:
    auto = ClusterSpec()
    assert local_plan(8, auto, cores=2, memory=24 * GiB) == (2, 1)
    assert local_plan(8, auto, cores=16, memory=24 * GiB) == (8, 2)  # 3 GiB per worker at least
    assert local_plan(3, auto, cores=16, memory=64 * GiB) == (3, 5)  # never more than slides
    assert local_plan(1, auto, cores=16, memory=64 * GiB) == (0, 16)  # one slide: here
    assert local_plan(8, auto, cores=1, memory=64 * GiB) == (0, 1)  # one core: here
    assert local_plan(8, ClusterSpec(n_workers=3), cores=2, memory=4 * GiB) == (3, 1)
    assert local_plan(8, ClusterSpec(n_workers=0), cores=4, memory=4 * GiB) == (0, 4)
    assert local_plan(8, ClusterSpec(threads_per_worker=4), cores=16, memory=64 * GiB) == (4, 4)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small generated slides and one file that is not a slide."""
    from napari_histattn.io.synthetic import generate_synthetic_slide

    folder = tmp_path_factory.mktemp("cohort")
    for seed in (1, 2, 3):
        generate_synthetic_slide(
            folder / f"s{seed}.tiff", 1024, 1024, seed=seed, n_lesions=1, n_lookalikes=0,
            lesion_radius_px=150, mpp=0.5,
        )  # fmt: skip
    (folder / "bad.svs").write_bytes(b"not a slide" * 100)
    return folder


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "batch_summary.csv", newline="") as handle:
        return {Path(row["slide"]).name: row for row in csv.DictReader(handle)}


def _batch(cohort: Path, checkpoint: Path, out: Path, *extra: str) -> int:
    return main(
        ["batch", str(cohort), "--checkpoint", str(checkpoint), "--out", str(out)]
        + ["--device", "cpu", "--quiet", *extra]
    )


@pytest.mark.slow
def test_batch_on_a_cluster_survives_a_bad_slide_and_a_killed_worker(
    cohort, checkpoint_paths, tmp_path, capsys
) -> None:
    from distributed import Client, LocalCluster, WorkerPlugin

    marker = tmp_path / "killed-once"

    class KillDuringS2(WorkerPlugin):  # a local class: cloudpickle sends it by value
        def transition(self, key, start, finish, **kwargs):  # type: ignore[no-untyped-def]
            if finish == "executing" and "-s2-" in str(key) and not marker.exists():
                marker.touch()
                os._exit(1)  # the worker process dies with the slide half done

    checkpoint = checkpoint_paths["amil"]
    here = tmp_path / "here"
    assert _batch(cohort, checkpoint, here, "--dask-workers", "0") == 1  # bad.svs failed
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with cluster, Client(cluster) as client:
        client.register_plugin(KillDuringS2())
        out = tmp_path / "cluster"
        code = _batch(cohort, checkpoint, out, "--scheduler", cluster.scheduler_address)
    assert marker.exists(), "the plugin never killed the worker running s2"
    assert code == 1
    rows, reference = _rows(out), _rows(here)
    assert set(rows) == {"bad.svs", "s1.tiff", "s2.tiff", "s3.tiff"}
    assert rows["bad.svs"]["status"] == "failed" and "bad.svs" in rows["bad.svs"]["error"]
    for name in ("s1.tiff", "s2.tiff", "s3.tiff"):  # the retried slide too
        assert rows[name]["status"] == "ok", rows[name]
        for column in ("predicted_class", "prob_benign", "prob_lesion"):
            assert rows[name][column] == reference[name][column]  # same as in this process
        assert (out / Path(name).stem / "summary.json").is_file()
    summary = json.loads((out / "batch_summary.json").read_text())
    assert summary["counts"] == {"failed": 1, "ok": 3}
    assert cluster.scheduler_address in summary["ran_on"]
    assert "FAILED" in capsys.readouterr().err


@pytest.mark.slow
def test_batch_resumes_and_redoes_what_is_unfinished(cohort, checkpoint_paths, tmp_path) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("s1.tiff", "s3.tiff"):
        shutil.copy(cohort / name, slides / name)
    checkpoint = checkpoint_paths["amil"]
    out = tmp_path / "out"
    # The default: a local cluster sized to the machine (two slides on two cores or more).
    assert _batch(slides, checkpoint, out, "--dask-workers", "2") == 0
    first = _rows(out)
    assert all(row["run"] == "this run" and row["status"] == "ok" for row in first.values())
    stamp = (out / "s1" / "summary.json").stat().st_mtime_ns

    assert _batch(slides, checkpoint, out, "--dask-workers", "0") == 0
    again = _rows(out)
    assert all(row["run"] == "earlier run" for row in again.values())
    for name, row in again.items():
        assert row["prob_lesion"] == first[name]["prob_lesion"]
    assert (out / "s1" / "summary.json").stat().st_mtime_ns == stamp  # not rewritten

    (out / "s3" / "batch_request.json").unlink()  # as if the run stopped after the outputs
    assert _batch(slides, checkpoint, out, "--dask-workers", "0", "--seed", "0") == 0
    assert _rows(out)["s3.tiff"]["run"] == "this run"
    assert _rows(out)["s1.tiff"]["run"] == "earlier run"
    # Other options make other outputs: everything runs again.
    assert _batch(slides, checkpoint, out, "--dask-workers", "0", "--top-k", "2") == 0
    assert {row["run"] for row in _rows(out).values()} == {"this run"}
    assert _batch(slides, checkpoint, out, "--dask-workers", "0", "--top-k", "2", "--redo") == 0
    assert {row["run"] for row in _rows(out).values()} == {"this run"}


def test_cluster_options_are_checked(cohort, checkpoint_paths, tmp_path, capsys) -> None:
    checkpoint = checkpoint_paths["amil"]
    assert _batch(cohort, checkpoint, tmp_path, "--dask-workers", "-1") == 1
    assert "--dask-workers must be at least 0" in capsys.readouterr().err
    assert (
        _batch(cohort, checkpoint, tmp_path, "--scheduler", "tcp://x:1", "--dask-workers", "2") == 1
    )
    assert "not both" in capsys.readouterr().err
    code = _batch(cohort, checkpoint, tmp_path, "--scheduler", "tcp://127.0.0.1:9")
    assert code == 1
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err


@pytest.mark.slow
def test_features_on_a_local_cluster(cohort, tmp_path, capsys) -> None:
    import h5py

    def features(source: Path, out: Path, *extra: str) -> int:
        encoder = ["--encoder", "small_cnn", "--random-weights", "--device", "cpu", "--quiet"]
        return main(["features", str(source), "--out", str(out), *encoder, *extra])

    def rows_of(out: Path) -> dict[str, dict[str, str]]:
        with open(out / "features_summary.csv", newline="") as handle:
            return {Path(r["slide"]).name: r for r in csv.DictReader(handle)}

    out = tmp_path / "features"
    assert features(cohort, out, "--dask-workers", "2") == 1  # bad.svs failed
    rows = rows_of(out)
    assert rows["bad.svs"]["status"] == "failed"
    for name in ("s1.tiff", "s2.tiff", "s3.tiff"):
        assert rows[name]["status"] == "ok" and int(rows[name]["n_tiles"]) > 0
        with h5py.File(out / f"{Path(name).stem}.h5") as h5:
            assert h5["features"].shape[0] == int(rows[name]["n_tiles"])
    # Every worker made the same (seeded) random encoder: the files match one made here.
    here = tmp_path / "here"
    assert features(cohort / "s2.tiff", here) == 0
    with h5py.File(out / "s2.h5") as a, h5py.File(here / "s2.h5") as b:
        assert np.allclose(a["features"][:], b["features"][:], atol=1e-5)  # thread counts differ
    assert features(cohort, out, "--dask-workers", "0") == 1
    rows = rows_of(out)
    assert {rows[n]["status"] for n in ("s1.tiff", "s2.tiff", "s3.tiff")} == {"skipped (done)"}


def test_workers_get_absolute_paths(cohort, checkpoint_paths, tmp_path, monkeypatch) -> None:
    # A worker of a remote cluster does not run in this process's folder: relative
    # slide and output paths must reach it resolved.
    (tmp_path / "slides").mkdir()
    shutil.copy(cohort / "s1.tiff", tmp_path / "slides" / "s1.tiff")
    monkeypatch.chdir(tmp_path)
    assert _batch(Path("slides"), checkpoint_paths["amil"], Path("out"), "--dask-workers", "0") == 0
    row = _rows(tmp_path / "out")["s1.tiff"]
    assert Path(row["slide"]) == tmp_path / "slides" / "s1.tiff"
    assert Path(row["out_dir"]) == tmp_path / "out" / "s1"
    assert (tmp_path / "out" / "s1" / "summary.json").is_file()
