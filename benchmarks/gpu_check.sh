#!/usr/bin/env bash
# The GPU checks of seqmem, as one script for a CUDA machine: the CUDA tests, then the GPU
# tables into ${OUT:-benchmarks/gpu} (the kernels table becomes benchmarks/gpu.md).
#   bash benchmarks/gpu_check.sh            (from the repository root, seqmem installed)
# The kernels come from `pip install -e '.[gpu]'` (flash-linear-attention, mamba-ssm,
# causal-conv1d); a kernel that is not installed is reported and its tests are skipped.
set -uo pipefail
OUT=${OUT:-benchmarks/gpu}
PY=${PY:-python}
mkdir -p "$OUT"
$PY - <<'PY' | tee "$OUT/machine.txt"
import torch
from seqmem.ops import backends
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "count", torch.cuda.device_count())
for b in ("fla", "mamba_ssm"):
    print(b, backends.available(b) or "installed")
PY
# the CUDA tests: kernels against seqmem's forms, every family on every device, precision, DDP
timeout 900 $PY -m pytest -q -rs tests/test_backends.py tests/test_bench_kernels.py \
    tests/test_devices.py tests/test_precision.py tests/test_distributed.py \
    2>&1 | tail -40 | tee "$OUT/tests.txt"
# the GPU tables: own forms vs kernels per mixer (T up to 65,536), and the mixer grid on cuda
timeout 900 $PY -m seqmem.cli.main bench --device cuda --kernels --out "$OUT" 2>&1 | tail -5
timeout 600 $PY -m seqmem.cli.main bench --device cuda --quick --out "$OUT/grid" 2>&1 | tail -5
