"""`seqmem bench --kernels`: seqmem's own forms against the GPU kernels, per mixer. On a CPU
the kernels never run (`auto` is seqmem's own forms bit for bit), so the rows must show equal
outputs; on CUDA with the kernels installed, the kernels' outputs must agree with the own
forms to bfloat16 round-off."""

import pytest
import torch

from seqmem.bench.config import BenchConfig
from seqmem.bench.kernels import MIXERS, KernelShapes, _markdown, kernel_rows, kernels_to
from seqmem.errors import SeqmemError
from seqmem.ops import backends

TINY = KernelShapes(d_model=16, batch=1, lengths=(8, 24), rounds=1)


def test_rows_on_the_cpu_compare_a_form_with_itself():
    rows = kernel_rows("cpu", TINY, mixer_names=("gla", "mamba2"), dtype=torch.float32)
    assert [(r["mixer"], r["T"]) for r in rows] == [("gla", 8), ("gla", 24), ("mamba2", 8),
                                                    ("mamba2", 24)]
    for r in rows:
        assert "skipped" not in r, r
        assert r["max_abs_diff"] == 0.0 and r["out_scale"] > 0
        assert r["own_ms"] > 0 and r["kernel_ms"] > 0
        assert r["speedup"] == pytest.approx(r["own_ms"] / r["kernel_ms"])
    md = _markdown(rows, {"command": "seqmem bench --kernels", "device": "cpu",
                          "torch": torch.__version__, "date": "today", "rounds": 1,
                          "kernels": {"fla": "installed"}})
    assert md.count("\n| gla |") == 2 and "| 24 |" in md


def test_every_listed_mixer_calls_an_op_a_kernel_serves():
    served = {op for ops in backends.SERVES.values() for op in ops}
    for name, ops in MIXERS.items():
        assert any(op in ops for op in served), name


def test_the_table_needs_cuda():
    with pytest.raises(SeqmemError, match="needs --device cuda"):
        kernels_to(BenchConfig(parts=("kernels",)), "unused", command="x")


@pytest.mark.skipif(not torch.cuda.is_available() or backends.available("fla") is not None,
                    reason="needs CUDA and flash-linear-attention (pip install 'seqmem[gpu]')")
def test_on_cuda_the_kernels_agree_with_the_own_forms():
    rows = kernel_rows("cuda", KernelShapes(d_model=64, batch=2, lengths=(256,), rounds=1))
    for r in rows:
        assert "skipped" not in r, r
        assert r["max_abs_diff"] <= 0.05 * max(r["out_scale"], 1.0), r
