"""The fast-engine benchmark suite (benchmarks/bench_engines.py) runs end to end on the CPU
with tiny networks and writes its JSON and PNG."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")


@pytest.mark.slow
def test_quick_cpu_run_writes_json_and_png(tmp_path):
    from benchmarks.bench_engines import FPS, main
    from engines.neural.live import STEP_STAGES

    out = tmp_path / "engines_cpu.json"
    assert main(["--device", "cpu", "--quick", "--channels", "tiny", "--backends", "torch,ort",
                 "--batches", "1,2", "--max-sessions", "4", "-o", str(out)]) == 0
    r = json.loads(out.read_text())
    assert {"device", "machine", "config", "results"} <= set(r)
    assert r["device"] == "cpu" and r["config"]["weights"] == "random"
    assert r["machine"]["cores"] >= 1 and "gpu" in r["machine"]
    res = r["results"]
    assert set(res["backends"]) == {"torch", "ort"}
    for backend in res["backends"].values():
        assert backend["build"]["gt_build_s"] >= 0 and backend["build"]["first_step_s"] > 0
        assert [c["batch"] for c in backend["cells"]] == [1, 2]
        for cell in backend["cells"]:
            assert cell["step_ms"]["p50"] > 0 and cell["step_ms"]["p99"] >= cell["step_ms"]["p50"]
            assert set(cell["stages_ms"]) == set(STEP_STAGES)
            assert all(cell["stages_ms"][s]["p50"] >= 0 for s in STEP_STAGES)
            assert cell["stages_ms"]["texture"]["p50"] > 0
            assert cell["frames_per_s"] > 0
    assert res["headline"]["per_frame_ms"] > 0
    searches = res["sessions"]["searches"]
    assert [s["fps"] for s in searches] == list(FPS)
    for s in searches:
        assert 0 <= s["sessions"] <= 4 and s["tried"]
        assert s["tried"][0]["sessions"] == 1 and s["tried"][0]["latency_ms"]["p99"] > 0
    assert res["adaptation"]["iterations"] == 5 and res["adaptation"]["seconds"] > 0
    png = out.with_suffix(".png")
    assert png.is_file() and png.stat().st_size > 1000
