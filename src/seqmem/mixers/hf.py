"""Pretrained layers from Hugging Face transformers: `from_hf(module)` builds the seqmem mixer
that computes what a transformers layer computes and copies its weights into it, as
`load_torch` does for torch's RNNs.

    transformers.MambaMixer     -> seqmem `mamba`   (Gu & Dao 2023)
    transformers.Mamba2Mixer    -> seqmem `mamba2`  (Dao & Gu 2024), n_groups = 1
    transformers.Qwen3NextGatedDeltaNet -> seqmem `gated_deltanet` (Yang, Kautz & Hatamizadeh
                                   2025), as many key heads as value heads

Qwen3-Next's Gated DeltaNet is not equal to seqmem's to rounding, by one definition: it
L2-normalises q and k as x / sqrt(|x|^2 + 1e-6) (fla's `l2norm`), seqmem as
x / max(|x|, 1e-12) (`F.normalize`), so each normalised vector differs by a relative
~5e-7 / |x|^2 (2.2e-6 on outputs up to 2.0 for a small random layer in float64, 3.2e-7 with
seqmem's normalisation put into transformers; tests/test_hf_import.py). Everything else is
copied exactly, the channels permuted into seqmem's head-major order: the layout of its
projections (q, k, v, z and b, a grouped per key head), the convolution over q, k, v, the
decay exp(-exp(A_log) softplus(a + dt_bias)), beta = sigmoid(b), the scale d_k^-0.5 and the
gated RMSNorm RMSNorm(o) SiLU(z). Layers with fewer key heads than value heads (grouped
values) are refused: seqmem's layer has one head count.

The layer's configuration is read from the module itself (its sizes and its config), so no
weights or files are fetched: a module built from a small config, or one taken out of a
downloaded model by the caller, converts alike. Every option that seqmem's mixer does not have
(a bias on the projections, an activation other than SiLU, several groups of B and C, a
clamped time step) raises `SeqmemError` naming it, rather than converting to a layer that
computes something else.

transformers keeps the layer's inputs (b, t, d) and outputs (b, t, d) as seqmem does, so
`mixer(x)[0]` equals `module(x)` in every mode and as a loop of `step`, to the rounding of the
parts that transformers computes in float32 even for a float64 layer (Mamba's A, D and dt
bias: 1.1e-8; the gated RMSNorm of Mamba-2: 2.0e-7; tests/test_hf_import.py). transformers is an
optional dependency: pip install seqmem[hf]; it is imported only by the caller, never here.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from seqmem.errors import SeqmemError
from seqmem.mixers.delta import GatedDeltaNet
from seqmem.mixers.mamba import Mamba, Mamba2


def _require(layer: str, ok: bool, what: str) -> None:
    if not ok:
        raise SeqmemError(f"from_hf: this {layer} cannot be converted: {what}")


def _conv_weight(conv: nn.Conv1d) -> torch.Tensor:
    """A depthwise nn.Conv1d's weight (channels, 1, k) as ShortConv's (channels, k): both
    apply the kernel in the same (cross-correlation) order over causally padded inputs."""
    return conv.weight.detach()[:, 0, :]


def _copy(mixer: nn.Module, pairs: list[tuple[torch.Tensor, torch.Tensor | None]]) -> None:
    with torch.no_grad():
        for target, source in pairs:
            if source is None:
                target.zero_()
            else:
                target.copy_(source.detach())


def _options(module: nn.Module) -> dict:
    p = next(module.parameters())
    return {"device": p.device, "dtype": p.dtype}


def mamba_from_hf(module: nn.Module) -> Mamba:
    """The seqmem `mamba` mixer equal to a transformers `MambaMixer`, its weights copied:
    in_proj, conv1d (weight and bias; no bias: a zero bias), x_proj, dt_proj, A_log, D,
    out_proj; d_state = config.state_size, conv_size = config.conv_kernel,
    expand = intermediate_size / hidden_size, dt_rank = time_step_rank."""
    name = "MambaMixer"
    d_model, d_inner = module.hidden_size, module.intermediate_size
    _require(name, d_inner % d_model == 0,
             f"intermediate_size {d_inner} is not a multiple of hidden_size {d_model}")
    _require(name, module.activation == "silu",
             f"hidden_act is {module.activation!r}; seqmem's mamba uses 'silu'")
    _require(name, module.in_proj.bias is None and module.out_proj.bias is None,
             "use_bias is true (biases on in_proj / out_proj); seqmem's mamba has none")
    mixer = Mamba(d_model, d_state=module.ssm_state_size, conv_size=module.conv_kernel_size,
                  expand=d_inner // d_model, dt_rank=module.time_step_rank)
    mixer.to(**_options(module))
    _copy(mixer, [(mixer.in_proj.weight, module.in_proj.weight),
                  (mixer.conv.weight, _conv_weight(module.conv1d)),
                  (mixer.conv.bias, module.conv1d.bias),
                  (mixer.x_proj.weight, module.x_proj.weight),
                  (mixer.dt_proj.weight, module.dt_proj.weight),
                  (mixer.dt_proj.bias, module.dt_proj.bias),
                  (mixer.A_log, module.A_log), (mixer.D, module.D),
                  (mixer.out_proj.weight, module.out_proj.weight)])
    return mixer


def mamba2_from_hf(module: nn.Module) -> Mamba2:
    """The seqmem `mamba2` mixer equal to a transformers `Mamba2Mixer`, its weights copied:
    in_proj (z, x B C, dt in the same order), conv1d, dt_bias, A_log, D, norm (the gated
    RMSNorm: y SiLU(z) normalised over d_inner, as seqmem's with one group), out_proj."""
    name = "Mamba2Mixer"
    d_model, d_inner = module.hidden_size, module.intermediate_size
    n, h, p = module.ssm_state_size, module.num_heads, module.head_dim
    _require(name, module.n_groups == 1,
             f"n_groups is {module.n_groups}; seqmem's mamba2 shares one group of B, C")
    _require(name, h * p == d_inner and d_inner % d_model == 0,
             f"num_heads * head_dim = {h * p} must equal intermediate_size {d_inner}, a "
             f"multiple of hidden_size {d_model}")
    _require(name, module.activation == "silu",
             f"hidden_act is {module.activation!r}; seqmem's mamba2 uses 'silu'")
    _require(name, module.in_proj.bias is None and module.out_proj.bias is None,
             "use_bias is true (biases on in_proj / out_proj); seqmem's mamba2 has none")
    lo, hi = (float(v) for v in module.time_step_limit)
    _require(name, lo <= 0.0 and math.isinf(hi),
             f"time_step_limit is {module.time_step_limit}; seqmem's mamba2 does not clamp dt")
    _require(name, module.in_proj.out_features == 2 * d_inner + 2 * n + h,
             "its in_proj has extra MLP channels (d_mlp > 0)")
    mixer = Mamba2(d_model, d_state=n, conv_size=module.conv_kernel_size,
                   expand=d_inner // d_model, headdim=p, norm_eps=module.layer_norm_epsilon)
    mixer.to(**_options(module))
    _copy(mixer, [(mixer.in_proj.weight, module.in_proj.weight),
                  (mixer.conv.weight, _conv_weight(module.conv1d)),
                  (mixer.conv.bias, module.conv1d.bias),
                  (mixer.dt_bias, module.dt_bias), (mixer.A_log, module.A_log),
                  (mixer.D, module.D), (mixer.norm_weight, module.norm.weight),
                  (mixer.out_proj.weight, module.out_proj.weight)])
    return mixer


def gated_deltanet_from_hf(module: nn.Module) -> GatedDeltaNet:
    """The seqmem `gated_deltanet` mixer closest to a transformers `Qwen3NextGatedDeltaNet`
    (equal but for the L2 normalisation's epsilon, see the module docstring), its weights
    copied: in_proj_qkvz -> qkv (q, k, v rows) and out_gate (z rows), in_proj_ba -> gates
    (b rows, then a rows), conv1d -> conv, A_log, dt_bias, norm -> norm_weight,
    out_proj -> out. n_heads = linear_num_value_heads, d_k = linear_key_head_dim,
    d_v = linear_value_head_dim, conv_size = linear_conv_kernel_dim, norm_eps = rms_norm_eps."""
    name = "Qwen3NextGatedDeltaNet"
    d_model, h, dk, dv = module.hidden_size, module.num_v_heads, module.head_k_dim, \
        module.head_v_dim
    _require(name, module.num_k_heads == h,
             f"it has {module.num_k_heads} key heads and {h} value heads; seqmem's "
             f"gated_deltanet has as many of each")
    _require(name, module.activation == "silu",
             f"hidden_act is {module.activation!r}; seqmem's gated_deltanet uses 'silu'")
    _require(name, module.conv1d.bias is None, "its convolution has a bias")
    mixer = GatedDeltaNet(d_model, n_heads=h, expand_k=h * dk / d_model,
                          expand_v=h * dv / d_model, conv_size=module.conv_kernel_size,
                          norm_eps=module.layer_norm_epsilon)
    mixer.to(**_options(module))
    # in_proj_qkvz rows per head: [q (dk), k (dk), v (dv), z (dv)]; in_proj_ba: [b, a].
    qkvz = module.in_proj_qkvz.weight.detach().reshape(h, 2 * dk + 2 * dv, d_model)
    q, k, v, z = qkvz.split([dk, dk, dv, dv], dim=1)  # (h, ., d_model)
    ba = module.in_proj_ba.weight.detach().reshape(h, 2, d_model)
    # conv1d channels: [q of all heads, k of all heads, v of all heads]; seqmem's ShortConv
    # runs over its qkv channels, head-major: [q_1 k_1 v_1, q_2 k_2 v_2, ...].
    w = _conv_weight(module.conv1d)
    cq, ck, cv = w.split([h * dk, h * dk, h * dv], dim=0)
    conv = torch.cat([cq.reshape(h, dk, -1), ck.reshape(h, dk, -1), cv.reshape(h, dv, -1)],
                     dim=1).reshape(h * (2 * dk + dv), -1)
    _copy(mixer, [(mixer.qkv.weight, torch.cat([q, k, v], dim=1).reshape(-1, d_model)),
                  (mixer.out_gate.weight, z.reshape(h * dv, d_model)),
                  (mixer.gates.weight, ba.transpose(0, 1).reshape(2 * h, d_model)),
                  (mixer.conv.weight, conv), (mixer.A_log, module.A_log),
                  (mixer.dt_bias, module.dt_bias), (mixer.norm_weight, module.norm.weight),
                  (mixer.out.weight, module.out_proj.weight)])
    return mixer


CONVERTERS = {"MambaMixer": mamba_from_hf, "Mamba2Mixer": mamba2_from_hf,
              "Qwen3NextGatedDeltaNet": gated_deltanet_from_hf}


def from_hf(module: nn.Module) -> nn.Module:
    """The seqmem mixer equal to the transformers layer `module`, with its weights copied
    (see the module docstring for the layers accepted)."""
    convert = CONVERTERS.get(type(module).__name__)
    if convert is None:
        raise SeqmemError(f"from_hf: no seqmem mixer for {type(module).__name__}; accepted: "
                          f"{', '.join(CONVERTERS)}")
    return convert(module)
