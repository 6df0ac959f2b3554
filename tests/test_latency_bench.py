"""benchmarks/latency.py's reading of its timings: spread over repeats, and ties where the ranges overlap."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from compiler.backend import Timing

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture(scope="module")
def latency():
    sys.path.insert(0, BENCH)  # the script imports analysis_speed from its own folder
    try:
        spec = importlib.util.spec_from_file_location("latency_bench", os.path.join(BENCH, "latency.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(BENCH)
    return mod


def test_verdict_ranks_only_ranges_that_do_not_overlap(latency):
    assert latency.verdict([10.0, 11.0, 12.0], [12.5, 13.0, 14.0]) == "faster"
    assert latency.verdict([12.5, 13.0, 14.0], [10.0, 11.0, 12.0]) == "slower"
    assert latency.verdict([10.0, 11.0, 12.0], [11.5, 13.0, 14.0]) == "tie"  # medians 11 vs 13, but they overlap
    assert latency.verdict([10.0, 12.0], [12.0, 13.0]) == "tie"  # touching ranges are a tie too
    assert latency.spread([3.0, 1.0, 2.0, 10.0]) == {"min": 1.0, "median": 2.5, "max": 10.0}


def _reps(ms: dict[str, list[float]]) -> list[dict[str, Timing]]:
    n = len(next(iter(ms.values())))
    return [{k: Timing(v[i], v[i] * 1.1, 30, 1) for k, v in ms.items()} for i in range(n)]


def test_a_cell_within_the_noise_is_a_tie_in_the_row_and_the_summary(latency):
    """vit_b_16 at batch 1 in the table before repeats: prunec 145.3 ms, Torch-Pruning 148.6 ms, one median
    each. With repeats that overlap it is a tie, not a win; a clear gap stays a win."""
    macs = {"prunec": (None, 0.493), "torch-pruning": (None, 0.500), "prunec-latency": (None, 0.490)}
    close = latency.cell("vit_b_16", 1, "onnxruntime-cpu", {}, _reps({
        "original": [246.1, 251.0, 240.2], "prunec": [145.3, 150.9, 141.0],
        "torch-pruning": [148.6, 143.9, 152.2], "prunec-latency": [127.8, 129.0, 126.1],
    }), macs)  # fmt: skip
    clear = latency.cell("resnet50", 1, "onnxruntime-cpu", {}, _reps({
        "original": [93.7, 95.0, 92.1], "prunec": [50.6, 51.2, 49.9],
        "torch-pruning": [59.6, 60.3, 58.8], "prunec-latency": [60.0, 61.0, 62.0],
    }), macs)  # fmt: skip
    assert close["prunec"]["vs_torch_pruning"] == "tie"
    assert close["prunec-latency"]["vs_torch_pruning"] == "faster"
    assert clear["prunec"]["vs_torch_pruning"] == "faster"
    assert clear["prunec-latency"]["vs_torch_pruning"] == "tie"  # 59.6 vs 60.0 median; ranges overlap
    assert close["prunec"]["ms"] == 145.3 and close["prunec"]["ms_spread"] == {"min": 141.0, "median": 145.3, "max": 150.9}
    # speedup/MACs paired by repeat: original / prunec of the same repeat, times the MACs fraction
    s = close["prunec"]["speedup_per_macs_spread"]
    assert s["min"] == pytest.approx(251.0 / 150.9 * 0.493) and s["max"] == pytest.approx(240.2 / 141.0 * 0.493)
    lines = latency.summary([close, clear])
    assert lines[0].startswith("- prunec against Torch-Pruning's model: faster in 1, tie in 1, slower in 0 of 2 cells")
    assert lines[1].startswith("- prunec-latency against Torch-Pruning's model: faster in 1, tie in 1, slower in 0 of 2")
    assert "slower in 0, tie in 0" in lines[0]  # never slower than the original here
