"""`seqmem bench --kernels --device cuda`: seqmem's own forms against the GPU kernels, per mixer.

For every mixer whose ops dispatch to a kernel (`seqmem.ops.backends`: fla for linear
attention, retention, gla, the delta rules and ssd; mamba-ssm for the selective scan;
causal-conv1d for the short convolution), one layer at d_model = `KernelShapes.d_model`, batch
`batch`, the forward and backward of its training form at each length T (up to 65,536), twice
in interleaved rounds (`measure.interleaved_rounds`, each call ending with a device
synchronisation): once with `backends.use("torch")` (seqmem's own forms) and once with
`backends.use("auto")` (the installed kernels wherever they support the call). Both start from
the same weights and inputs, and the table's `max |diff|` column is the largest difference of
their outputs, a check that the kernel computed the same thing. A length that runs out of
memory, or a call that fails, gets its row with the reason.

On a CPU, `auto` is seqmem's own forms bit for bit, so the table compares a form with itself:
`kernels_to` refuses a device other than cuda; `kernel_rows` runs anywhere (the tests).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from seqmem import mixers
from seqmem.bench.config import BenchConfig
from seqmem.bench.measure import (
    interleaved_rounds,
    ms,
    synchronize,
    table_context,
    timing,
    write_rows,
)
from seqmem.build import seeded
from seqmem.devices import resolve_device
from seqmem.errors import SeqmemError
from seqmem.ops import backends

#: mixers whose training forms call an op that a GPU kernel serves, and the ops they call
MIXERS: dict[str, str] = {
    "linear_attn": "linear_attention (fla chunk_simple_gla)",
    "retnet": "retention (fla chunk_simple_gla)",
    "gla": "gla (fla chunk_gla)",
    "deltanet": "delta_rule (fla chunk_delta_rule), short_conv (causal-conv1d)",
    "gated_deltanet": "gated_delta_rule (fla chunk_gated_delta_rule), short_conv",
    "mamba": "selective_scan (mamba-ssm selective_scan_fn), short_conv (causal-conv1d)",
    "mamba2": "ssd (fla chunk_simple_gla), short_conv (causal-conv1d)",
}


@dataclass(frozen=True)
class KernelShapes:
    d_model: int = 1024
    batch: int = 1
    lengths: tuple[int, ...] = (1024, 4096, 16384, 65536)
    rounds: int = 3


QUICK_KERNELS = KernelShapes(d_model=64, batch=1, lengths=(64, 256), rounds=2)


def _step(module: torch.nn.Module, x: torch.Tensor, spec: str, device) -> Callable[[], None]:
    """One forward and backward of the training form under the kernel choice `spec`."""

    def run() -> None:
        with backends.use(spec):
            y, _ = module(x, final_state=False)
            y.float().square().mean().backward()
        module.zero_grad(set_to_none=True)
        synchronize(device)

    return run


def kernel_rows(device: torch.device | str, shapes: KernelShapes, *,
                mixer_names: Sequence[str] = tuple(MIXERS), dtype=torch.bfloat16,
                progress: Callable[[str], None] | None = None) -> list[dict]:
    """The table's rows: per mixer and length, the own forms' and the kernels' fwd+bwd time,
    their ratio and the largest output difference (see the module docstring)."""
    device = torch.device(device)
    say = progress or (lambda msg: None)
    rows = []
    for name in mixer_names:
        with seeded(0):
            module = mixers.build(name, shapes.d_model).to(device=device, dtype=dtype)
        for T in shapes.lengths:
            row = {"mixer": name, "ops": MIXERS.get(name, ""), "T": T, "batch": shapes.batch,
                   "d_model": shapes.d_model, "dtype": str(dtype).removeprefix("torch.")}
            say(f"kernels: {name} at T={T}")
            gen = torch.Generator().manual_seed(T)
            x = torch.randn(shapes.batch, T, shapes.d_model, generator=gen).to(device, dtype)
            x.requires_grad_(True)
            try:
                with torch.no_grad(), backends.use("torch"):
                    own_y = module(x, final_state=False)[0].float()
                with torch.no_grad(), backends.use("auto"):
                    kernel_y = module(x, final_state=False)[0].float()
                row["max_abs_diff"] = float((own_y - kernel_y).abs().max())
                row["out_scale"] = float(own_y.abs().max())
                del own_y, kernel_y
                times, _ = interleaved_rounds([_step(module, x, "torch", device),
                                               _step(module, x, "auto", device)],
                                              shapes.rounds)
            except torch.OutOfMemoryError:
                row["skipped"] = "out of memory"
                rows.append(row)
                torch.cuda.empty_cache() if device.type == "cuda" else None
                continue
            except (RuntimeError, SeqmemError) as e:
                row["skipped"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                rows.append(row)
                continue
            own, kernel = timing(times[0]), timing(times[1])
            row.update({"own_ms": own.median * 1e3, "kernel_ms": kernel.median * 1e3,
                        "speedup": own.median / kernel.median})
            rows.append(row)
    return rows


def kernels_to(cfg: BenchConfig, out: Path, *, command: str,
               progress: Callable[[str], None] | None = None) -> tuple[list[dict], dict]:
    """Measure the table on `cfg.device` (cuda only) and write kernels.jsonl/csv/md."""
    device = resolve_device(cfg.device)
    if device.type != "cuda":
        raise SeqmemError(f"bench --kernels compares seqmem's forms with the GPU kernels: it "
                          f"needs --device cuda (got {cfg.device!r}); install the kernels "
                          f"with pip install 'seqmem[gpu]'")
    shapes = QUICK_KERNELS if cfg.shapes == "quick" else KernelShapes()
    ready = {b: backends.available(b) for b in ("fla", "mamba_ssm")}
    rows = kernel_rows(device, shapes, progress=progress)
    ctx = {**table_context(shapes, shapes.rounds), "dtype": "bfloat16", "command": command,
           "device": torch.cuda.get_device_name(device),
           "kernels": {b: reason or "installed" for b, reason in ready.items()}}
    return rows, write_rows(rows, ctx, out, "kernels", _markdown(rows, ctx), fields=("mixer",))


def _markdown(rows: list[dict], ctx: dict) -> str:
    lines = [
        "# seqmem's own forms against the GPU kernels", "",
        f"`{ctx['command']}` on {ctx['device']}, torch {ctx['torch']}, {ctx['date']}, "
        f"bfloat16 weights and inputs. One layer's forward + backward, median of "
        f"{ctx['rounds']} interleaved rounds; speedup = own / kernel (above 1: the kernel is "
        f"faster). Kernels: "
        + "; ".join(f"{b}: {s}" for b, s in ctx["kernels"].items()) + ".", "",
        "| mixer | T | own ms | kernel ms | speedup | max abs diff (out scale) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['mixer']} | {r['T']:,} | {r['skipped']} | | | |")
            continue
        lines.append(f"| {r['mixer']} | {r['T']:,} | {ms(r['own_ms'])} | "
                     f"{ms(r['kernel_ms'])} | {r['speedup']:.2f}x | "
                     f"{r['max_abs_diff']:.2g} ({r['out_scale']:.2g}) |")
    return "\n".join(lines) + "\n"
