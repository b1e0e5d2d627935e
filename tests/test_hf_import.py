"""`seqmem.mixers.from_hf`: the seqmem mixer built from a transformers layer computes what the
layer computes, in every mode and as a loop of `step`. Each layer is randomly initialised from
a small config (no weights are downloaded), its parameters moved off their initial values so
that every weight matters, and compared on random inputs in float64. Tolerances: Mamba 1e-7,
because transformers rounds A = -exp(A_log), D and the dt bias to float32 even in a float64
layer (measured 1.1e-8, outputs up to 0.6); Mamba-2 2e-6, because transformers computes its
gated RMSNorm in float32 (measured 2.0e-7, outputs up to 2.2); Gated DeltaNet 2e-5, because it
also differs by its L2 normalisation's epsilon (measured 2.2e-6, outputs up to 2.0), and 2e-6
once transformers' `l2norm` is given seqmem's (measured 3.2e-7: the float32 norm's rounding).
Skips where transformers (or one of its models) is not installed."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from seqmem import mixers
from seqmem.errors import SeqmemError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None,
    reason="transformers is not installed (pip install seqmem[hf])")

F64 = torch.float64


def _jitter(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move every parameter off its initial value (ones, zeros, ...), in float64."""
    gen = torch.Generator().manual_seed(seed)
    module = module.to(F64).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=F64))
    return module


def _inputs(d_model: int, t: int = 13, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, t, d_model, generator=gen, dtype=F64)


def _mamba():
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    cfg = MambaConfig(hidden_size=16, state_size=4, intermediate_size=32, conv_kernel=3,
                      time_step_rank=3, num_hidden_layers=1)
    return MambaMixer(cfg, 0), cfg


def _mamba2(**kw):
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    cfg = Mamba2Config(**{"hidden_size": 16, "state_size": 4, "expand": 2, "head_dim": 8,
                          "num_heads": 4, "n_groups": 1, "conv_kernel": 3, "chunk_size": 4,
                          "num_hidden_layers": 1, **kw})
    return Mamba2Mixer(cfg, 0), cfg


def _gated_deltanet(**kw):
    qwen3_next = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next",
                                     reason="this transformers has no Qwen3-Next")
    from transformers import Qwen3NextConfig

    cfg = Qwen3NextConfig(**{"hidden_size": 16, "linear_num_value_heads": 2,
                             "linear_num_key_heads": 2, "linear_key_head_dim": 8,
                             "linear_value_head_dim": 12, "linear_conv_kernel_dim": 3,
                             "num_hidden_layers": 1, "layer_types": ["linear_attention"],
                             "num_attention_heads": 2, "num_key_value_heads": 2,
                             "head_dim": 8, **kw})
    return qwen3_next.Qwen3NextGatedDeltaNet(cfg, 0), qwen3_next


def _check(module, mixer, atol):
    x = _inputs(module.hidden_size)
    with torch.no_grad():
        ref = module(x)
        for mode in mixer.modes:
            y, _ = mixer(x, mode=mode, chunk_size=4)
            assert (y - ref).abs().max() <= atol, (mode, (y - ref).abs().max().item())
        state = mixer.init_state(2, dtype=F64)
        steps = []
        for x_t in x.unbind(1):
            y_t, state = mixer.step(x_t, state)
            steps.append(y_t)
        assert (torch.stack(steps, 1) - ref).abs().max() <= atol
    assert ref.abs().max() > 0.05  # the comparison is not between two near-zero outputs


def test_mamba_from_hf_equals_mamba_mixer():
    module = _jitter(_mamba()[0], seed=0)
    mixer = mixers.from_hf(module)
    assert type(mixer).__name__ == "Mamba" and mixer.dt_rank == 3 and mixer.d_inner == 32
    assert next(mixer.parameters()).dtype == F64
    _check(module, mixer, atol=1e-7)


def test_mamba2_from_hf_equals_mamba2_mixer():
    module = _jitter(_mamba2()[0], seed=1)
    mixer = mixers.from_hf(module)
    assert type(mixer).__name__ == "Mamba2" and mixer.n_heads == 4 and mixer.headdim == 8
    _check(module, mixer, atol=2e-6)


def test_gated_deltanet_from_hf_equals_qwen3_next_up_to_the_l2norm_eps(monkeypatch):
    module, qwen3_next = _gated_deltanet()
    module = _jitter(module, seed=2)
    mixer = mixers.from_hf(module)
    assert type(mixer).__name__ == "GatedDeltaNet"
    assert (mixer.n_heads, mixer.d_k, mixer.d_v) == (2, 8, 12)
    _check(module, mixer, atol=2e-5)
    # With seqmem's normalisation in place of fla's x / sqrt(|x|^2 + 1e-6), the two agree to
    # the rounding of transformers' float32 norm.
    monkeypatch.setattr(qwen3_next, "l2norm",
                        lambda x, dim=-1, eps=1e-6: F.normalize(x, dim=dim))
    _check(module, mixer, atol=2e-6)


def test_from_hf_refuses_what_it_cannot_convert():
    with pytest.raises(SeqmemError, match=r"from_hf: no seqmem mixer for Linear; accepted: "
                                          r"MambaMixer, Mamba2Mixer, Qwen3NextGatedDeltaNet"):
        mixers.from_hf(torch.nn.Linear(2, 2))
    module, _ = _mamba2(n_groups=2)
    with pytest.raises(SeqmemError, match=r"n_groups is 2"):
        mixers.from_hf(module)
    module, _ = _mamba2(use_bias=True)
    with pytest.raises(SeqmemError, match=r"use_bias is true"):
        mixers.from_hf(module)
    module, _ = _gated_deltanet(linear_num_key_heads=1)
    with pytest.raises(SeqmemError, match=r"1 key heads and 2 value heads"):
        mixers.from_hf(module)
