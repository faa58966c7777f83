"""benchmarks/bench_gpu.py (`make bench-gpu`) runs: its --smoke mode on the CPU, through the
transformers engine, with the bandwidth bound computed (the figures mean nothing here)."""

import subprocess
import sys

from conftest import ROOT


def test_bench_gpu_smoke_runs_on_the_cpu_and_prints_the_bound_and_its_share():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--smoke", "--bandwidth", "0.05"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Model: Qwen3-MoE smoke widths, 1 layers, float32; 4 units, batch 4" in result.stdout
    (row,) = [line.split() for line in result.stdout.splitlines() if line.strip().startswith("transformers engine")]
    units_per_s, tokens_per_s, prompt, bound, share = row[2:]
    assert float(units_per_s) > 0 and float(bound) > 0 and share.endswith("%") and int(prompt) > 1000
