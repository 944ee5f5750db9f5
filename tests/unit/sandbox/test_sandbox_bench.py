"""`python -m sandbox.bench`: a short run against the emulator in its own process, and its JSON record."""

from __future__ import annotations

import json
from pathlib import Path

from sandbox.bench import parse_args, report, run


def test_a_short_run_is_measured_and_recorded(tmp_path: Path) -> None:
    output = ["--output-dir", str(tmp_path / "results")]
    args = parse_args(
        ["--requests", "300", "--connections", "2", "--concurrency", "20", "--latency-ms", "1", *output]
    )
    result = run(args)
    assert result.accepted == 300
    assert result.server_cpu_us_per_request > 0
    assert result.client_cpu_us_per_request > 0
    path = report(result, args.output_dir)
    assert path.parent == tmp_path / "results"
    assert path.name.startswith("sandbox-")
    recorded = json.loads(path.read_text())
    assert recorded["requests_per_s"] == result.requests_per_s
    assert {"server_cpu_us_per_request", "client_cpu_us_per_request", "server_saturated"} <= recorded.keys()
