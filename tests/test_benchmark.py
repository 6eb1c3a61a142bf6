"""The benchmark's JSON document and CLI, at a tiny shape (batch 1, 64×64); no timing assertions."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from psalm import CHEAFFusionModule, PSALMFusion
from psalm.benchmark import (
    CPU_PAGES,
    HUGE_PAGES_ENV,
    huge_pages,
    run_benchmark,
    run_peer_settings,
    thp_mode,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

TINY = dict(batch=1, input_size=64, repeats=2, warmup=1)
MODEL_KEYS = {"params", "params_by_component", "latency_ms", "peak_mem_mb"}
REPORT_CONFIG = dict(
    query_channels=[32, 64, 128, 256],
    support_channels=[32, 64, 128, 256],
    out_channels=[128, 256, 512, 512],
    num_heads=4,
)


@pytest.fixture(scope="module")
def doc() -> dict:
    return run_benchmark(device="cpu", **TINY)


def _output_mb(batch: int, input_size: int) -> float:
    """Size of one forward's float32 outputs: (B, out_channels[i], side/4/2^i, ...)."""
    sides = [input_size // (4 * 2**i) for i in range(4)]
    n = sum(batch * c * s * s for c, s in zip(REPORT_CONFIG["out_channels"], sides, strict=True))
    return 4 * n / 2**20


def test_document_keys_and_shape(doc):
    for key in ("device", "batch", "input_size", "models", "speedup", "param_reduction"):
        assert key in doc, key
    assert "memory_ratio" in doc
    assert doc["batch"] == 1 and doc["input_size"] == 64
    assert isinstance(doc["device"], str) and doc["device"]
    assert set(doc["models"]) == {"cheaf", "psalm"}
    for name, model in doc["models"].items():
        assert MODEL_KEYS <= set(model), f"{name}: missing {MODEL_KEYS - set(model)}"
    json.dumps(doc)  # serialisable as it is (raises TypeError otherwise)


def test_params_match_the_modules(doc):
    expected = {
        "cheaf": CHEAFFusionModule(**REPORT_CONFIG, use_pyramid_refinement=True),
        "psalm": PSALMFusion(**REPORT_CONFIG, use_pyramid=True, use_conv_preprocessing=True),
    }
    for name, module in expected.items():
        model = doc["models"][name]
        assert model["params"] == sum(p.numel() for p in module.parameters()), name
        assert model["params_by_component"] == module.param_breakdown(), name
        assert sum(model["params_by_component"].values()) == model["params"], name


def test_derived_figures_are_consistent(doc):
    cheaf, psalm = doc["models"]["cheaf"], doc["models"]["psalm"]
    assert doc["param_reduction"] == pytest.approx(1 - psalm["params"] / cheaf["params"])
    assert doc["speedup"] == pytest.approx(cheaf["latency_ms"] / psalm["latency_ms"])
    assert doc["memory_ratio"] == pytest.approx(psalm["peak_mem_mb"] / cheaf["peak_mem_mb"])
    for name in ("cheaf", "psalm"):
        assert doc["models"][name]["latency_ms"] > 0 and math.isfinite(
            doc["models"][name]["latency_ms"]
        )


def test_peak_memory_covers_the_outputs(doc):
    outputs = _output_mb(doc["batch"], doc["input_size"])
    for name, model in doc["models"].items():
        assert model["peak_mem_mb"] >= outputs > 0, (
            f"{name}: peak {model['peak_mem_mb']:.3f} MB < its outputs' {outputs:.3f} MB"
        )


def test_residual_connections_are_traced(doc):
    assert doc["models"]["cheaf"]["residual_connections"] == ["R1", "R2", "R3", "R4"]
    assert doc["models"]["psalm"]["residual_connections"] == ["R1", "R2"]


def test_feature_map_support_and_contiguous_layout():
    doc = run_benchmark(device="cpu", support="map", memory_format="contiguous", **TINY)
    assert doc["memory_format"] == "contiguous" and doc["support"] == "map"
    for model in doc["models"].values():
        assert model["peak_mem_mb"] >= _output_mb(1, 64)


def test_a_single_repeat_works_or_says_why():
    """--repeats 1 is a natural smoke setting: it must work, or fail naming the option."""
    try:
        doc = run_benchmark(device="cpu", batch=1, input_size=64, repeats=1, warmup=0)
    except ValueError as err:
        assert "repeats" in str(err), (
            f"repeats=1 fails with {type(err).__name__}: {err!r}, which does not name the option "
            "(psalm/benchmark.py: statistics.quantiles(times, n=4) needs two data points)"
        )
    else:
        assert doc["repeats"] == 1


def test_input_size_not_a_multiple_of_32_is_refused():
    with pytest.raises(ValueError, match="multiple of 32"):
        run_benchmark(device="cpu", batch=1, input_size=80, repeats=2, warmup=0)


@pytest.mark.slow
def test_cli_writes_the_json_and_prints_the_table(tmp_path):
    out = tmp_path / "sub" / "benchmark.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "psalm.benchmark", "--batch", "1", "--input-size", "64"]
    cmd += ["--repeats", "2", "--warmup", "1", "--peer-repeats", "1"]
    cmd += ["--peer-threads", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["batch"] == 1 and doc["input_size"] == 64
    assert set(doc["models"]) == {"cheaf", "psalm"}
    for row in (
        "Parameters",
        "Latency (ms/batch)",
        "Peak forward mem (MB)",
        "Residual connections",
    ):
        assert f"| {row}" in proc.stdout, f"table row {row!r} missing:\n{proc.stdout}"
    assert "batch 1, input 64×64" in proc.stdout
    assert f"{doc['models']['cheaf']['params'] / 1e6:.3f}M" in proc.stdout
    assert f"Wrote {out}" in proc.stdout
    assert doc["cpu_pages"] == "huge" and doc["kernel_thp"] in ("always", "madvise", "never")
    assert "channels_last, huge pages)" in proc.stdout
    peers = doc["peer_comparable"]
    assert {(r["threads"], r["memory_format"]) for r in peers} == {
        (1, "contiguous"),
        (1, "channels_last"),
    }
    assert "Peer-comparable setting" in proc.stdout
    for r in peers:
        assert f"| {r['psalm_ms']:>9.1f} |" in proc.stdout


def test_peer_settings_cover_every_thread_count_and_layout():
    import torch

    before = torch.get_num_threads()
    rows = run_peer_settings(batch=1, input_size=64, threads=(1, 2), warmup=0, repeats=1)
    assert torch.get_num_threads() == before  # restored
    assert [(r.threads, r.memory_format) for r in rows] == [
        (1, "contiguous"),
        (2, "contiguous"),
        (1, "channels_last"),
        (2, "channels_last"),
    ]
    for r in rows:
        assert r.cheaf_ms > 0 and r.psalm_ms > 0
        assert r.speedup == pytest.approx(r.cheaf_ms / r.psalm_ms)


def test_peer_settings_refuse_an_unknown_layout():
    with pytest.raises(ValueError, match=r"unknown \['nhwc'\]"):
        run_peer_settings(batch=1, input_size=64, memory_formats=("nhwc",), repeats=1)


# Minor page faults of allocating and filling a 64 MB tensor, in a fresh process whose CPU pages
# huge_pages() set: one per 4 KB page (16,384) as the system gives them, about one per 2 MB page
# on huge pages. Run three times: each tensor is freed and the next faulted in again.
_FAULTS = """
import resource, sys
from psalm.benchmark import huge_pages
assert huge_pages(sys.argv[1]) == sys.argv[1]
import torch
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 * 2**20)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del x
print(min(faults))
"""


@pytest.mark.skipif(
    thp_mode() not in ("always", "madvise"), reason="the kernel gives no transparent huge pages"
)
def test_huge_pages_cut_the_page_faults_of_large_buffers():
    faults = {}
    for pages in CPU_PAGES:
        proc = subprocess.run(
            [sys.executable, "-c", _FAULTS, pages],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        faults[pages] = int(proc.stdout.split()[-1])
    assert faults["system"] > 10_000  # every 4 KB page of the 64 MB faulted in
    assert faults["huge"] < faults["system"] / 10


def test_huge_pages_say_what_is_in_effect_once_torch_is_imported(monkeypatch):
    import torch  # noqa: F401 (already imported by this module's imports)

    monkeypatch.delenv(HUGE_PAGES_ENV, raising=False)
    assert huge_pages("huge") == "system"  # too late: torch's allocator already read it
    with pytest.raises(ValueError, match="cpu_pages must be one of"):
        huge_pages("giant")
