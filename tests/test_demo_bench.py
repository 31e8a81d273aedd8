"""benchmarks/demo_bench.py runs end to end at tiny size (a real server, two clients), so it cannot rot:
every table fills with positive numbers and the batcher merges what two clients send together."""

import json

import pytest

pytest.importorskip("gradio", reason="the demo needs the [demo] extra: pip install -e .[demo]")
import demo_bench  # benchmarks/ is on pytest's pythonpath (pyproject.toml)

pytestmark = pytest.mark.slow


def test_demo_bench_tiny(tmp_path, capsys):
    out = tmp_path / "demo.json"
    (result,) = demo_bench.main(["--pipeline", "tiny", "--requests", "2", "--clients", "2", "--num-images",
                                 "1", "--margins", "0", "1", "--threads", "1", "--batch-wait", "0.5",
                                 "--json", str(out)])
    assert json.loads(out.read_text()) == [json.loads(json.dumps(result))]
    assert "÷ one at a time" in capsys.readouterr().out
    one, two = result["throughput"]
    assert one["sampler_calls"] == 2 and two["sampler_calls"] == 1  # two requests sent together: one call
    assert one["images_per_s"] > 0 and two["images_per_s"] > 0
    s = result["streaming"]
    assert s["partials"] == 16 and 0 < s["first_partial_s"] < s["full_grid_streamed_s"]
    for d in result["partial_decode"]:
        assert d["whole_grid_ms"] > 0 and d["changed_rows_ms"] > 0 and d["max_pixel_error"] >= 0


def test_server_load_tiny(tmp_path, capsys):
    """benchmarks/server_load.py end to end at tiny size: the official openai client, one client then
    three, no errors, every figure filled; three clients sending together are merged."""
    pytest.importorskip("openai", reason="the dev extra holds the openai client")
    import server_load

    out = tmp_path / "load.json"
    result = server_load.main(["--pipeline", "tiny", "--clients", "3", "--seconds", "3", "--baseline-seconds",
                               "2", "--threads", "1", "--batch-wait", "0.5", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert "÷ one client" in capsys.readouterr().out
    one, three = result["phases"]
    assert one["clients"] == 1 and three["clients"] == 3 and one["errors"] == three["errors"] == 0
    assert three["requests"] >= 3 and three["sampler_calls"] < three["requests"]
    for p in (one, three):
        assert 0 < p["p50_s"] <= p["p95_s"] and p["images_per_s"] > 0 and p["rss_end_mb"] > 0
