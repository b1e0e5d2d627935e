"""Kernel backends (seqmem.ops.backends): the spec and the choice, "auto" changing nothing on
CPU, a missing kernel as one line, and every mapping from seqmem's conventions to a kernel's
checked against seqmem's own forms: on CPU with a reference of the kernel's calling
convention (fla's own pure-PyTorch references, or a loop written here from mamba-ssm's and
causal-conv1d's documented semantics), on CUDA with the real kernels."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from seqmem import ops
from seqmem.errors import SeqmemError
from seqmem.ops import backends

PACKAGE = {"fla": "flash-linear-attention", "mamba_ssm": "mamba-ssm"}
OP_PACKAGE = {op: PACKAGE["fla"] for op in backends.SERVES["fla"]} | {
    "selective_scan": "mamba-ssm", "short_conv": "causal-conv1d"}
OP_BACKEND = {op: b for b in ("fla", "mamba_ssm") for op in backends.SERVES[b]}


# ---- the op cases: inputs, seqmem's own call, the mapped call --------------------------------
def _inputs(op: str, gen: torch.Generator, *, dtype=torch.float64, gate_dtype=None,
            device="cpu", b=2, t=11, h=2, dk=4, dv=3) -> dict[str, torch.Tensor]:
    """Random inputs of `op` (drawn on the CPU, then moved), decays <= 0, beta in (0, 1),
    keys of the delta rules normalised; gates in gate_dtype (default: dtype)."""
    gate_dtype = gate_dtype or dtype

    def r(*shape, gate=False):
        x = torch.randn(*shape, generator=gen, dtype=torch.float64)
        return x.to(device, gate_dtype if gate else dtype)

    def heads(gated_v=True):
        return {"q": r(b, t, h, dk), "k": r(b, t, h, dk), "v": r(b, t, h, dv),
                "S": r(b, h, dk, dv) if gated_v else None}

    if op == "linear_attention":
        return heads()
    if op == "retention":
        return {**heads(), "log_decay": F.logsigmoid(r(h, gate=True) + 2)}
    if op == "gla":
        return {**heads(), "g": F.logsigmoid(r(b, t, h, dk, gate=True) + 2)}
    if op in ("delta_rule", "gated_delta_rule"):
        a = heads()
        a["k"] = F.normalize(a["k"].double(), dim=-1).to(dtype)
        a["beta"] = torch.sigmoid(r(b, t, h, gate=True))
        if op == "gated_delta_rule":
            a["g"] = F.logsigmoid(r(b, t, h, gate=True) + 2)
        return a
    if op == "ssd":
        return {"x": r(b, t, h, dv), "a": F.logsigmoid(r(b, t, h, gate=True) + 1),
                "B": r(b, t, h, dk), "C": r(b, t, h, dk), "S": r(b, h, dv, dk)}
    if op == "selective_scan":
        d, n = 5, 4
        return {"u": r(b, t, d), "delta": r(b, t, d), "A": -r(d, n).float().exp().to(device),
                "B": r(b, t, n), "C": r(b, t, n), "D": r(d).float(), "z": r(b, t, d),
                "delta_bias": r(d).float()}
    if op == "short_conv":
        d, k = 5, 4
        return {"x": r(b, t, d), "weight": r(d, k), "bias": r(d), "S": r(b, k - 1, d)}
    raise AssertionError(op)


def own(op: str, a: dict):
    """seqmem's call of `op` (which dispatches by the backend chosen)."""
    if op == "linear_attention":
        return ops.linear_attention(a["q"], a["k"], a["v"], state=a["S"])
    if op == "retention":
        return ops.retention(a["q"], a["k"], a["v"], a["log_decay"], state=a["S"])
    if op == "gla":
        return ops.gla(a["q"], a["k"], a["v"], a["g"], state=a["S"])
    if op == "delta_rule":
        return ops.delta_rule(a["q"], a["k"], a["v"], beta=a["beta"], state=a["S"])
    if op == "gated_delta_rule":
        return ops.gated_delta_rule(a["q"], a["k"], a["v"], g=a["g"], beta=a["beta"],
                                    state=a["S"])
    if op == "ssd":
        return ops.ssd(a["x"], a["a"], a["B"], a["C"], state=a["S"])
    if op == "selective_scan":
        return ops.selective_scan(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"],
                                  delta_bias=a["delta_bias"], delta_softplus=True)
    if op == "short_conv":
        return ops.short_conv(a["x"], a["weight"], a["bias"], a["S"])
    raise AssertionError(op)


def mapped(op: str, kernel, a: dict):
    """The mapping of `op` onto `kernel` (ops.backends), called directly."""
    if op == "linear_attention":
        return backends.fla_linear_attention(kernel, a["q"], a["k"], a["v"], state=a["S"])
    if op == "retention":
        return backends.fla_retention(kernel, a["q"], a["k"], a["v"], a["log_decay"],
                                      state=a["S"])
    if op == "gla":
        return backends.fla_gla(kernel, a["q"], a["k"], a["v"], a["g"], state=a["S"])
    if op == "delta_rule":
        return backends.fla_delta_rule(kernel, a["q"], a["k"], a["v"], beta=a["beta"],
                                       state=a["S"])
    if op == "gated_delta_rule":
        return backends.fla_gated_delta_rule(kernel, a["q"], a["k"], a["v"], g=a["g"],
                                             beta=a["beta"], state=a["S"])
    if op == "ssd":
        return backends.fla_ssd(kernel, a["x"], a["a"], a["B"], a["C"], state=a["S"])
    if op == "selective_scan":
        return backends.mamba_selective_scan(kernel, a["u"], a["delta"], a["A"], a["B"],
                                             a["C"], a["D"], a["z"],
                                             delta_bias=a["delta_bias"], delta_softplus=True)
    if op == "short_conv":
        return backends.causal_conv1d_short_conv(kernel, a["x"], a["weight"], a["bias"],
                                                 a["S"])
    raise AssertionError(op)


def _run(call, a: dict, gen: torch.Generator, *, state_loss: bool = True):
    """call(a) -> (y, S) and the gradients of sum(y * w_y) + sum(S * w_S) (random weights
    from gen, the same for every call of a test) with respect to every float input."""
    leaves = {n: None if x is None else x.detach().clone().requires_grad_(x.is_floating_point())
              for n, x in a.items()}
    y, S = call(leaves)
    w_y = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.device, y.dtype)
    loss = (y * w_y).sum()
    if state_loss:
        w_S = torch.randn(S.shape, generator=gen, dtype=torch.float64).to(S.device, S.dtype)
        loss = loss + (S * w_S).sum()
    names = [n for n, x in leaves.items() if x is not None and x.requires_grad]
    grads = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
    return y, S, dict(zip(names, grads, strict=True))


def _assert_close(got, want, rel: float, what: str):
    """|got - want| <= rel * (1 + max |want|) everywhere (in float64)."""
    assert got is not None, f"{what}: no value (no gradient)"
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got.double() - want.double()).abs().max().item()
    bound = rel * (1 + want.double().abs().max().item())
    assert err <= bound, f"{what}: max error {err:.3g} > {bound:.3g}"


def _compare(op, got, want, rel, *, state_loss=True):
    (y1, S1, g1), (y2, S2, g2) = got, want
    _assert_close(y1, y2, rel, f"{op} output")
    _assert_close(S1, S2, rel, f"{op} final state")
    assert set(g1) == set(g2)
    for n in g2:
        _assert_close(g1[n], g2[n], rel, f"{op} gradient of {n}")


# ---- (1) the spec and the choice ------------------------------------------------------------
def test_check_spec_normalises_a_name_and_a_mapping():
    assert backends.check_spec("auto") == dict.fromkeys(backends.OPS, "auto")
    assert backends.check_spec("torch") == dict.fromkeys(backends.OPS, "torch")
    fla = backends.check_spec("fla")
    assert [op for op, b in fla.items() if b == "fla"] == list(backends.SERVES["fla"])
    assert {fla[op] for op in ("selective_scan", "short_conv")} == {"torch"}
    assert backends.check_spec({"gla": "torch", "short_conv": "mamba_ssm"}) == {
        "gla": "torch", "short_conv": "mamba_ssm"}
    assert set(backends.OPS) == set(backends.SERVES["fla"]) | set(backends.SERVES["mamba_ssm"])


@pytest.mark.parametrize("spec, message", [
    ("triton", "unknown backend 'triton' for every op; accepted: auto, torch, fla, mamba_ssm"),
    ({"gla": "cuda"}, "unknown backend 'cuda' for op gla; accepted: auto, torch, fla"),
    ({"attention": "fla"}, "unknown op 'attention' in a backend spec; ops that dispatch: "
                           "linear_attention, retention"),
    ({"gla": "mamba_ssm"}, "backend mamba_ssm has no kernel for op gla; it serves: "
                           "selective_scan, short_conv"),
    (["fla"], "a backend spec is a backend name or a mapping op -> backend, got list"),
])
def test_check_spec_refuses_in_one_line(spec, message):
    with pytest.raises(SeqmemError) as e:
        backends.check_spec(spec)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_use_sets_the_choice_per_op_nests_and_restores():
    assert {backends.choice(op) for op in backends.OPS} == {"auto"}
    with backends.use("torch"):
        assert backends.choice("gla") == "torch"
        with backends.use({"gla": "fla"}) as now:
            assert backends.choice("gla") == "fla" and backends.choice("ssd") == "torch"
            assert now["gla"] == "fla"
        assert backends.choice("gla") == "torch"
    assert backends.choice("gla") == "auto"
    with pytest.raises(SeqmemError, match="unknown op 'mamba'; ops that dispatch: "):
        backends.choice("mamba")


def test_available():
    assert backends.available("auto") is None and backends.available("torch") is None
    with pytest.raises(SeqmemError, match="unknown backend 'jax'"):
        backends.available("jax")
    assert backends.available("fla", "short_conv").startswith(
        "backend fla has no kernel for op short_conv; it serves: ")
    for op, b in OP_BACKEND.items():
        reason = backends.available(b, op)
        if not torch.cuda.is_available():
            assert reason == (f"backend {b} ({op}) needs CUDA and the package {OP_PACKAGE[op]}: "
                              f"CUDA is not available here; install with pip install "
                              f"'seqmem[gpu]'")
        assert reason is None or ("\n" not in reason and OP_PACKAGE[op] in reason)


# ---- (2) on CPU, "auto" is seqmem's own forms, bit for bit, and costs no import --------------
@pytest.mark.parametrize("op", backends.OPS)
def test_auto_equals_torch_on_cpu(op, monkeypatch):
    a = _inputs(op, torch.Generator().manual_seed(1), dtype=torch.float32)

    def no_import(*args):
        raise AssertionError("auto tried a kernel's import for CPU inputs")

    monkeypatch.setattr(backends, "_load", no_import)
    with backends.use("auto"):
        y_auto, S_auto = own(op, a)
    with backends.use("torch"):
        y_torch, S_torch = own(op, a)
    assert torch.equal(y_auto, y_torch) and torch.equal(S_auto, S_torch)


# ---- (3) a kernel asked for but not usable: one line naming the package --------------------
@pytest.mark.parametrize("op", backends.OPS)
def test_explicit_kernel_not_usable_here_is_one_line(op):
    a = _inputs(op, torch.Generator().manual_seed(2), dtype=torch.float32)
    backend = OP_BACKEND[op]
    with backends.use({op: backend}), pytest.raises(SeqmemError) as e:
        own(op, a)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"backend {backend} ({op}) ")
    if not torch.cuda.is_available():
        assert f"the package {OP_PACKAGE[op]}" in msg and "pip install 'seqmem[gpu]'" in msg
    else:  # CUDA here: the package is missing, or these CPU tensors are refused
        assert OP_PACKAGE[op] in msg or "runs on CUDA tensors, got cpu" in msg


@pytest.mark.parametrize("op, mode, opts, message", [
    ("gla", "recurrent", {}, "runs gla's chunk form only, not mode 'recurrent' (seqmem's own "
                                 "form)"),
    ("delta_rule", "chunk", {"inputs": [torch.zeros(1, 2, 1, 4)]},
     "takes inputs of one dtype among bfloat16, float16, got float32"),
    ("gla", "chunk", {"inputs": [torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4).half()]},
     "takes inputs of one dtype among bfloat16, float16, float32, got float16, float32"),
    ("gla", "chunk", {"inputs": [torch.zeros(1, 2, 1, 4)],
                      "gates": [torch.zeros(1, 2, 1, 4, dtype=torch.float64)]},
     "takes gates of dtype bfloat16, float16, float32, got float64"),
    ("selective_scan", "chunk", {"state": torch.zeros(1, 4, 2)},
     "takes no initial state (mamba-ssm's selective_scan_fn starts from zeros)"),
    ("short_conv", None, {"inputs": [], "weight": torch.zeros(4, 5)},
     "takes kernel widths 2 to 4, got 5"),
])
def test_what_a_kernel_does_not_support(op, mode, opts, message):
    x = torch.zeros(1, 2, 4)
    assert backends._unsupported(op, mode, x, opts) == message
    assert backends._unsupported("gla", "chunk", torch.zeros(1, 0, 4), {}) is not None


# ---- (4) the mappings against seqmem's own forms, with references of the kernels' convention --
def _fla_naive(module: str, name: str):
    """`name` from fla's pure-PyTorch reference fla/ops/<module>/naive.py, loaded from the file
    (fla's package imports triton, which a CPU machine need not have)."""
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("flash-linear-attention is not installed (it is in seqmem[dev]): its "
                    "reference files check the fla mappings on CPU")
    path = Path(next(iter(spec.submodule_search_locations))) / "ops" / module / "naive.py"
    loader = importlib.util.spec_from_file_location(f"test_backends_fla_{module}", path)
    mod = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(mod)
    return getattr(mod, name)


def _float32_state(initial_state):
    # fla's chunk kernels assert a float32 initial state; the references do not, so check here
    assert initial_state is None or initial_state.dtype == torch.float32


def fla_simple_gla_reference(q, k, v, g=None, scale=None, initial_state=None,
                             output_final_state=False):
    """chunk_simple_gla's calling convention on fla's naive_recurrent_simple_gla (g None: no
    decay, a zero log gate)."""
    _float32_state(initial_state)
    ref = _fla_naive("simple_gla", "naive_recurrent_simple_gla")
    g = torch.zeros(q.shape[:3], dtype=q.dtype) if g is None else g
    return ref(q, k, v, g, scale=scale, initial_state=initial_state,
               output_final_state=output_final_state)


def fla_gla_reference(q, k, v, g, scale=None, initial_state=None, output_final_state=False):
    """chunk_gla's calling convention on fla's naive_recurrent_gla (which always scales by
    d_k^-0.5: another scale is folded into q)."""
    _float32_state(initial_state)
    ref = _fla_naive("gla", "naive_recurrent_gla")
    if scale is not None:
        q = q * (scale * q.shape[-1] ** 0.5)
    return ref(q, k, v, g, initial_state=initial_state, output_final_state=output_final_state)


def fla_delta_rule_reference(q, k, v, beta, scale=None, initial_state=None,
                             output_final_state=False):
    """chunk_delta_rule's calling convention ((b, t, h, d), scale) on fla's
    delta_rule_recurrence ((b, h, t, d), scale d_k^-0.5)."""
    _float32_state(initial_state)
    ref = _fla_naive("delta_rule", "delta_rule_recurrence")
    if scale is not None:
        q = q * (scale * q.shape[-1] ** 0.5)
    o, S = ref(*(x.transpose(1, 2) for x in (q, k, v, beta)), initial_state=initial_state,
               output_final_state=output_final_state)
    return o.transpose(1, 2), S


def fla_gated_delta_rule_reference(q, k, v, g, beta, scale=None, initial_state=None,
                                   output_final_state=False):
    """chunk_gated_delta_rule's calling convention (..., g, beta) on fla's
    naive_recurrent_gated_delta_rule, whose order is (..., beta, g)."""
    _float32_state(initial_state)
    ref = _fla_naive("gated_delta_rule", "naive_recurrent_gated_delta_rule")
    return ref(q, k, v, beta, g, scale=scale, initial_state=initial_state,
               output_final_state=output_final_state)


def selective_scan_fn_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                                delta_softplus=False, return_last_state=False):
    """mamba-ssm's selective_scan_fn as documented (a plain loop): u, delta, z (b, d, l),
    A (d, n), B, C (b, n, l), D, delta_bias (d,); from the zero state,
    x_t = exp(dt_t A) x_{t-1} + dt_t B_t u_t, y_t = C_t x_t + D u_t, times silu(z_t);
    returns out (b, d, l) and, if asked, the last state (b, d, n), which carries no gradient
    ("the gradient of the last state is not considered in the backward pass")."""
    assert A.dtype == torch.float32 and D.dtype == torch.float32  # the kernel's weight type
    dt = delta if delta_bias is None else delta + delta_bias[:, None]
    dt = F.softplus(dt) if delta_softplus else dt
    x = u.new_zeros(u.shape[0], A.shape[0], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        x = torch.exp(dt[:, :, i, None] * A) * x + (dt[:, :, i] * u[:, :, i])[..., None] \
            * B[:, None, :, i]
        ys.append((x * C[:, None, :, i]).sum(-1))
    out = torch.stack(ys, 2)
    if D is not None:
        out = out + D[:, None] * u
    if z is not None:
        out = out * F.silu(z)
    if not return_last_state:
        return out
    return _LastStateWithoutGradient.apply(out, x)


class _LastStateWithoutGradient(torch.autograd.Function):
    """(out, last state) as selective_scan_fn returns them: both are outputs of one autograd
    node, and its backward uses out's gradient only."""

    @staticmethod
    def forward(ctx, out, last_state):
        return out.clone(), last_state.clone()

    @staticmethod
    def backward(ctx, g_out, g_last_state):
        return g_out, None


def causal_conv1d_fn_reference(x, weight, bias=None, seq_idx=None, initial_states=None,
                               return_final_states=False, final_states_out=None,
                               activation=None):
    """causal-conv1d's causal_conv1d_fn as documented (a plain loop): x (b, d, l), weight
    (d, w), initial_states (b, d, w-1) (zeros when None); out[:, c, t] = bias[c] +
    sum_j weight[c, j] xp[:, c, t + j] over xp = [initial_states, x]; the final states are
    the last w-1 columns of xp. Returning final states needs x channel-last (stride 1 along
    d), as the kernel asserts."""
    assert seq_idx is None and final_states_out is None and activation is None
    if return_final_states:
        assert x.stride(1) == 1, "Only channel-last layout support returning final_states_out"
    b, d, t = x.shape
    w = weight.shape[1]
    s0 = x.new_zeros(b, d, w - 1) if initial_states is None else initial_states
    xp = torch.cat([s0, x], -1)
    cols = [sum(weight[:, j] * xp[:, :, i + j] for j in range(w)) for i in range(t)]
    out = torch.stack(cols, -1) + (0 if bias is None else bias[:, None])
    return (out, xp[:, :, t:]) if return_final_states else out


REFERENCES = {
    "linear_attention": fla_simple_gla_reference, "retention": fla_simple_gla_reference,
    "ssd": fla_simple_gla_reference, "gla": fla_gla_reference,
    "delta_rule": fla_delta_rule_reference,
    "gated_delta_rule": fla_gated_delta_rule_reference,
    "selective_scan": selective_scan_fn_reference, "short_conv": causal_conv1d_fn_reference,
}


@pytest.mark.parametrize("op", backends.OPS)
def test_mapping_equals_seqmem_on_the_kernels_convention(op):
    """The mapping fed a float32 reference of the kernel's convention gives seqmem's own
    outputs, final state and gradients (inputs and initial state), computed in float64."""
    a = _inputs(op, torch.Generator().manual_seed(3))
    has_state = op != "selective_scan"  # mamba-ssm's kernel: no initial state, no state gradient
    kernel = REFERENCES[op]
    want = _run(lambda x: own(op, x), a, torch.Generator().manual_seed(4), state_loss=has_state)
    a32 = {n: None if x is None else x.float() for n, x in a.items()}
    got = _run(lambda x: mapped(op, kernel, x), a32, torch.Generator().manual_seed(4),
               state_loss=has_state)
    _compare(op, got, want, 2e-5, state_loss=has_state)
    assert got[1].dtype == torch.float32


@pytest.mark.parametrize("op", ["gla", "ssd", "short_conv"])
def test_mapping_from_the_zero_state(op):
    """state=None: the kernel starts from zeros and the final state has seqmem's dtype."""
    a = {n: None if x is None else x.float()
         for n, x in _inputs(op, torch.Generator().manual_seed(5)).items()}
    a["S"] = None
    y1, S1 = own(op, a)
    y2, S2 = mapped(op, REFERENCES[op], a)
    _assert_close(y2, y1, 1e-5, f"{op} output")
    _assert_close(S2, S1, 1e-5, f"{op} final state")
    assert S2.dtype == S1.dtype


def test_selective_scan_final_state_refuses_a_gradient():
    """The kernel drops the gradient of its last state; the mapping makes that an error."""
    a = {n: x.float().requires_grad_() for n, x in
         _inputs("selective_scan", torch.Generator().manual_seed(6)).items()}
    y, h = mapped("selective_scan", selective_scan_fn_reference, a)
    torch.autograd.grad(y.sum(), a["u"], retain_graph=True)  # through y: fine
    with pytest.raises(SeqmemError, match="gives its final state no gradient; use backend "
                                          "'torch' for selective_scan"):
        torch.autograd.grad((y.sum() + h.sum()), a["u"])


# ---- (5) the real kernels on CUDA ----------------------------------------------------------
def _needs(op: str):
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available: the real kernels run on CUDA only")
    reason = backends.available(OP_BACKEND[op], op)
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.parametrize("dtype, rel", [(torch.float32, 5e-3), (torch.bfloat16, 5e-2)],
                         ids=["float32", "bfloat16"])
@pytest.mark.parametrize("op", backends.OPS)
def test_kernel_equals_seqmem_on_cuda(op, dtype, rel):
    """The kernel (chosen by "auto" and by its name) against seqmem's own forms in float32 on
    the same values: outputs, final states and all gradients; bfloat16 inputs with float32
    gates and state (the layout under autocast)."""
    _needs(op)
    if op == "delta_rule" and dtype == torch.float32:
        pytest.skip("fla's chunk_delta_rule takes bfloat16 / float16 only (auto runs seqmem's "
                    "own form for float32)")
    gen = torch.Generator().manual_seed(7)
    a = _inputs(op, gen, dtype=dtype, gate_dtype=torch.float32, device="cuda", b=2, t=100,
                h=4, dk=32, dv=32)
    if a.get("S") is not None:
        a["S"] = a["S"].float()
    if op == "short_conv":
        a["weight"], a["bias"] = a["weight"].to(dtype), a["bias"].to(dtype)
    has_state = op != "selective_scan"
    used = []
    load = backends._load

    def spy(backend, name):  # records the kernels that auto runs
        fn, reason = load(backend, name)
        return (None if fn is None else lambda *x, **kw: used.append(name) or fn(*x, **kw)), reason

    with pytest.MonkeyPatch.context() as mp, backends.use("auto"):
        mp.setattr(backends, "_load", spy)
        own(op, a)
    assert used == [op], f"auto did not run the kernel of {op}"
    a32 = {n: None if x is None else x.float() for n, x in a.items()}
    with backends.use({op: "torch"}):
        want = _run(lambda x: own(op, x), a32, torch.Generator().manual_seed(8),
                    state_loss=has_state)
    with backends.use({op: OP_BACKEND[op]}):
        got = _run(lambda x: own(op, x), a, torch.Generator().manual_seed(8),
                   state_loss=has_state)
    _compare(op, got, want, rel, state_loss=has_state)
