"""Speed and memory measurement of every mixer form (`seqmem bench`); never asserted in tests."""

from seqmem.bench.config import PARTS, QUICK, QUICK_PARTS, BenchConfig
from seqmem.bench.run import bench_to, run_bench, write_outputs

__all__ = ["PARTS", "QUICK", "QUICK_PARTS", "BenchConfig", "bench_to", "run_bench", "write_outputs"]
