"""Speed and memory measurement of every mixer form (`seqmem bench`); never asserted in tests."""

from seqmem.bench.config import QUICK, BenchConfig
from seqmem.bench.run import bench_to, run_bench, write_outputs

__all__ = ["QUICK", "BenchConfig", "bench_to", "run_bench", "write_outputs"]
