"""torch's threads per run (fewer on a busy machine, restored after), channels-last
tiles, the device's batch size and bfloat16 encoders."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import napari_histattn.inference.threads as threads
from napari_histattn.errors import HistattnError
from napari_histattn.inference.engine import classify, device_batch_size
from napari_histattn.inference.patches import rgb_to_tensor
from napari_histattn.progress import run_to_completion


def test_an_explicit_count_wins_and_bad_ones_are_refused(monkeypatch) -> None:
    monkeypatch.setenv(threads.THREADS_ENV_VAR, "3")
    assert threads.torch_threads(5) == (5, "as asked")
    assert threads.torch_threads() == (3, f"from {threads.THREADS_ENV_VAR}")
    with pytest.raises(HistattnError, match="at least 1"):
        threads.torch_threads(0)
    monkeypatch.setenv(threads.THREADS_ENV_VAR, "two")
    with pytest.raises(HistattnError, match="positive integer"):
        threads.torch_threads()


def test_busy_cores_are_left_to_the_work_that_holds_them(monkeypatch) -> None:
    monkeypatch.delenv(threads.THREADS_ENV_VAR, raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(threads, "busy_cores", lambda: 1.6)
    assert threads.torch_threads()[0] == 2
    monkeypatch.setattr(threads, "busy_cores", lambda: 9.0)
    assert threads.torch_threads()[0] == 1  # never none
    monkeypatch.setattr(threads, "busy_cores", lambda: 0.0)
    assert threads.torch_threads() == (4, "4 cores")


def test_busy_cores_sees_other_processes_spinning() -> None:
    spin = "import time\nend = time.time() + 30\nwhile time.time() < end: pass\n"
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
    try:
        time.sleep(0.5)
        assert threads.busy_cores() >= 1
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()


def test_run_threads_restores_the_count() -> None:
    before = torch.get_num_threads()
    with threads.run_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    assert 1 <= threads.usable_cores() <= len(os.sched_getaffinity(0))


def test_classify_records_its_threads_and_restores_them(lesion_slide, checkpoint_paths) -> None:
    before = torch.get_num_threads()
    result = run_to_completion(classify(lesion_slide.path, checkpoint_paths["amil"], threads=1))
    assert result.provenance["torch_threads"] == 1
    assert result.provenance["torch_threads_why"] == "as asked"
    assert not any("thread" in m for m in result.provenance["messages"])
    assert torch.get_num_threads() == before


def test_a_run_on_a_busy_machine_says_why_it_has_fewer_threads(
    lesion_slide, checkpoint_paths, monkeypatch
) -> None:
    monkeypatch.delenv(threads.THREADS_ENV_VAR, raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda: 1.0)
    result = run_to_completion(classify(lesion_slide.path, checkpoint_paths["amil"]))
    assert result.provenance["torch_threads"] == 1
    assert (
        "torch runs on 1 thread(s): 2 cores, 1 busy with other work"
        in (result.provenance["messages"])
    )


def test_amp_runs_the_encoder_in_bfloat16_close_to_float32(lesion_slide, loaded) -> None:
    ckpt = loaded["amil"]
    seen: list[torch.dtype] = []
    hook = ckpt.model.encoder.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        exact = run_to_completion(classify(lesion_slide.path, ckpt, device="cpu"))
        assert set(seen) == {torch.float32}
        seen.clear()
        amp = run_to_completion(classify(lesion_slide.path, ckpt, device="cpu", amp=True))
        assert set(seen) == {torch.bfloat16}
    finally:
        hook.remove()
    assert amp.provenance["amp"] is True and exact.provenance["amp"] is False
    np.testing.assert_allclose(amp.probabilities, exact.probabilities, atol=2e-2)
    on = np.isfinite(exact.attention)
    assert np.array_equal(on, np.isfinite(amp.attention))
    assert np.corrcoef(amp.attention[on], exact.attention[on])[0, 1] > 0.99


def test_channels_last_tiles_are_the_same_values_without_a_copy() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 9, 3), dtype=np.uint8)
    mean, std = [0.8, 0.6, 0.7], [0.2, 0.1, 0.3]
    plain = rgb_to_tensor(rgb, mean, std)
    last = rgb_to_tensor(rgb, mean, std, channels_last=True)
    assert plain.is_contiguous() and last.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(last, plain, rtol=0, atol=0)
    # The same arithmetic as torch's (x / 255 - mean) / std in float32.
    ref = (
        torch.from_numpy(rgb).float().div(255).permute(0, 3, 1, 2)
        - torch.tensor(mean).view(3, 1, 1)
    ) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(plain, ref, rtol=0, atol=0)
    assert rgb_to_tensor(rgb[0]).shape == (3, 7, 9)


def test_cuda_batches_grow_with_free_memory_and_others_keep_the_default() -> None:
    gib = 1 << 30
    cuda = torch.device("cuda")
    assert device_batch_size(128, torch.device("cpu")) == 128
    assert device_batch_size(128, cuda, free_bytes=gib) == 128
    assert device_batch_size(128, cuda, free_bytes=4 * gib) == 512
    assert device_batch_size(128, cuda, free_bytes=40 * gib) == 1024
