"""Time-invariant state-space mixers: LSSL, S4D and S5.

Each channel (LSSL, S4D) or the whole d_model vector (S5) runs a linear SSM
x' = A x + B u, y = C x + D u, discretised with a trainable step dt, so the layer is both a
linear RNN (mode "recurrent") and a long convolution ("conv") or a parallel scan ("parallel",
"chunk"). A position-wise nonlinearity follows (`activation`):

    "glu"   y = GLU(W GELU(ssm(u)) + b), W (2 d_model, d_model)   (S4D's didactic layer)
    "gelu"  y = W GELU(ssm(u)) + b                                (LSSL)
    "none"  y = ssm(u)                                            (the bare linear SSM)

Complex states are stored as real tensors (..., 2) (real, imaginary), so that a state is a
plain real tensor of the parameters' dtype. The ops are in `seqmem.ops.ssm` (the HiPPO
measures and the PTD initialisation in `seqmem.ops.s4`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmem.errors import SeqmemError, check_choice, check_int
from seqmem.mixers.base import Mixer, register
from seqmem.ops import tuning
from seqmem.ops.s4 import MEASURES, hippo, ptd_half
from seqmem.ops.ssm import (
    diag_recurrence,
    diag_recurrence_step,
    diag_ssm,
    diag_ssm_step,
    discretize_bilinear,
    discretize_zoh,
    hippo_n,
    ssm,
    ssm_bilinear_step,
)

ACTIVATIONS = ("glu", "gelu", "none")
S4D_INITS = ("lin", "inv", "legs", "ptd")
S5_INITS = ("hippo_n", "ptd")
DISCRETIZATIONS = ("zoh", "bilinear")


# ---- shared pieces -------------------------------------------------------------------------
def _here(x: Tensor) -> Tensor:
    """x (computed on the CPU in float64) on the default device and dtype of the current
    context, e.g. the meta device while a config is validated."""
    return x.to(device=torch.empty(0).device, dtype=torch.get_default_dtype())


def _check(name: str, d_state: int, dt_min: float, dt_max: float, *, even: int = 1) -> None:
    """d_state a positive multiple of `even`, 0 < dt_min <= dt_max, or a one-line error."""
    if check_int(f"{name}: d_state", d_state, low=even) % even:
        raise SeqmemError(f"{name}: d_state must be a multiple of {even}, got {d_state!r}")
    if not (isinstance(dt_min, int | float) and isinstance(dt_max, int | float)
            and 0 < dt_min <= dt_max):
        raise SeqmemError(f"{name}: needs 0 < dt_min <= dt_max, got dt_min={dt_min!r}, "
                          f"dt_max={dt_max!r}")


def _log_dt(n: int, dt_min: float, dt_max: float) -> nn.Parameter:
    """log dt drawn uniformly in [log dt_min, log dt_max] (S4's initialisation)."""
    lo, hi = math.log(dt_min), math.log(dt_max)
    return nn.Parameter(torch.rand(n) * (hi - lo) + lo)


def _complex(s: Tensor) -> Tensor:
    return torch.complex(s[..., 0], s[..., 1])


def _real(x: Tensor) -> Tensor:
    return torch.stack([x.real, x.imag], dim=-1)


class _Output(nn.Module):
    """The position-wise output of an SSM layer (see the module docstring)."""

    def __init__(self, d_model: int, activation: str):
        super().__init__()
        self.activation = activation
        width = {"glu": 2 * d_model, "gelu": d_model, "none": 0}[activation]
        self.proj = nn.Linear(d_model, width) if width else None

    def forward(self, y: Tensor) -> Tensor:
        if self.proj is None:
            return y
        y = self.proj(F.gelu(y))
        return F.glu(y, dim=-1) if self.activation == "glu" else y


# ---- LSSL ----------------------------------------------------------------------------------
@register("lssl")
class LSSL(Mixer):
    """Linear State-Space Layer (Gu, Johnson, Goel, Saab, Dao, Rudra & Re 2021, "Combining
    Recurrent, Convolutional, and Continuous-time Models with Linear State-Space Layers").

    Every channel h is a SISO SSM with the shared HiPPO A (n, n) and B (n,) of `measure`
    (LegS by default; LegT or FouT, `ops.s4.hippo`), its own step
    dt_h and read-out C_h, discretised by the bilinear transform (the paper's GBT, alpha = 1/2):

        x_t = A_bar_h x_{t-1} + B_bar_h u_t,   y_t = C_h . x_t + D_h u_t,
        A_bar_h = (I - dt_h/2 A)^-1 (I + dt_h/2 A),  B_bar_h = (I - dt_h/2 A)^-1 dt_h B,

    then the output nonlinearity. "conv" forms the kernel K_l = C A_bar^l B_bar blockwise,
    K_{j L0 + l} = (C A_bar^{j L0}) (A_bar^l B_bar) with L0 ~ sqrt(t), from two Krylov
    sequences of length ~ sqrt(t) made by doubling (`ops.ssm.ssm`), and convolves by FFT (plus
    C A_bar^{t+1} x_{-1} for an initial state): memory O(t d_model + sqrt(t) d_model d_state),
    never a (d_model, t, d_state) tensor. `step` solves (I - dt/2 A) x_t = (I + dt/2 A) x_{t-1}
    + dt B u_t directly (`ops.ssm.ssm_bilinear_step`; a triangular solve for the fixed LegS A),
    from the current parameters, instead of forming A_bar at every token.

    Args:
        d_model: channels (input and output width).
        d_state: HiPPO order n (state floats per channel).
        measure: the HiPPO basis of A and B: "legs" (default, scaled Legendre), "legt"
            (Legendre on a sliding window of length 1) or "fout" (Fourier on a sliding window).
        dt_min, dt_max: dt_h is initialised log-uniformly in [dt_min, dt_max].
        train_A: learn A and B too (the paper's LSSL); False keeps HiPPO fixed (LSSL-f).
        activation: "gelu" (default), "glu" or "none".
    """

    modes = ("conv", "recurrent")

    def __init__(self, d_model: int, *, d_state: int = 64, dt_min: float = 1e-3,
                 dt_max: float = 1e-1, train_A: bool = False, activation: str = "gelu",
                 measure: str = "legs"):
        super().__init__(d_model)
        _check("lssl", d_state, dt_min, dt_max)
        self.activation = check_choice("lssl activation", activation, ACTIVATIONS)
        self.measure = check_choice("lssl measure", measure, MEASURES)
        self.d_state, self.train_A = d_state, bool(train_A)
        A, B = hippo(measure, d_state, device="cpu")
        if self.train_A:
            self.A, self.B = nn.Parameter(_here(A)), nn.Parameter(_here(B))
        else:
            self.register_buffer("A", _here(A))  # (n, n)
            self.register_buffer("B", _here(B))  # (n,)
        self.log_dt = _log_dt(d_model, dt_min, dt_max)  # (h,)
        self.C = nn.Parameter(torch.randn(d_model, d_state))  # (h, n)
        self.D = nn.Parameter(torch.randn(d_model))  # (h,)
        self.out = _Output(d_model, self.activation)

    def discrete(self) -> tuple[Tensor, Tensor]:
        """A_bar (h, n, n), B_bar (h, n)."""
        return discretize_bilinear(self.A, self.B, self.log_dt.exp())

    def _forward(self, x, state, mode, chunk_size):
        A_bar, B_bar = self.discrete()
        y, state = ssm(x, A_bar, B_bar, self.C, state=state, mode=mode)
        return self.out(y + self.D * x), state

    def _step(self, x_t, state):
        y, state = ssm_bilinear_step(x_t, self.A, self.B, self.log_dt.exp(), self.C, state)
        return self.out(y + self.D * x_t), state

    def init_state(self, batch_size, *, device=None, dtype=None):
        return torch.zeros(batch_size, self.d_model, self.d_state,
                           **self.state_options(device, dtype))

    def state_size(self):
        return self.d_model * self.d_state

    @torch.no_grad()
    def timescales(self) -> Tensor:
        """Per channel, the slowest mode's e-folding time -1 / log|a_bar| in steps, a_bar =
        (1 + dt lambda / 2) / (1 - dt lambda / 2) over the eigenvalues lambda of A (for LegS
        lambda = -1, ..., -n, so about 1 / dt)."""
        lam = torch.linalg.eigvals(self.A.double().cpu()).to(self.C.device)  # (n,)
        dt = self.log_dt.double().exp()[:, None]  # (h, 1)
        mag = ((1 + dt * lam / 2) / (1 - dt * lam / 2)).abs().amax(-1)  # (h,)
        return (-1 / mag.log()).to(self.C.dtype)

    def extra_repr(self):
        return (f"d_model={self.d_model}, d_state={self.d_state}, measure={self.measure}, "
                f"train_A={self.train_A}, activation={self.activation}")


# ---- S4D -----------------------------------------------------------------------------------
def s4d_init(init: str, N: int) -> Tensor:
    """S4D's diagonal A (N/2,) complex float64 for `init` (see `S4D`), on the CPU."""
    n = torch.arange(N // 2, dtype=torch.float64, device="cpu")
    if init in ("lin", "inv"):
        imag = math.pi * n if init == "lin" else N / math.pi * (N / (2 * n + 1) - 1)
        return torch.complex(torch.full_like(imag, -0.5), imag)
    if init == "legs":
        return hippo_n(N, device="cpu")[0][: N // 2]
    return ptd_half("legs", N)[0]


@register("s4d")
class S4D(Mixer):
    """Diagonal S4 (Gu, Gupta, Goel & Re 2022, "On the Parameterization and Initialization of
    Diagonal State Space Models"). Every channel h is a diagonal SSM with n = d_state / 2
    complex modes (their conjugates implied, hence the 2 Re), B = 1, ZOH-discretised:

        x_t = a_h * x_{t-1} + b_h u_t,   y_t = 2 Re(C_h . x_t) + D_h u_t,
        a_h = exp(dt_h A_h),  b_h = (exp(dt_h A_h) - 1) / A_h,
        A = -exp(log_neg_A_real) + i A_imag,
        S4D-Lin:  A_n = -1/2 + i pi n;    S4D-Inv:  A_n = -1/2 + i (N/pi) (N/(2n+1) - 1),
        S4D-LegS: A = the eigenvalues of the normal part A_N of HiPPO-LegS (N x N), those with
                  Im >= 0 (-1/2 + i lambda, `ops.ssm.hippo_n`);
        S4D-PTD:  A = the eigenvalues of largest imaginary part of LegS + E, the perturbed
                  LegS of S4-PTD (Yu et al. 2024, `ops.s4.ptd`),

    then the output nonlinearity. "conv" is the Vandermonde kernel + FFT convolution (plus
    2 Re(C a^{t+1} x_{-1}) for an initial state).

    Args:
        d_model: channels.
        d_state: N, state floats per channel (even; N/2 complex modes).
        init: "lin" (S4D-Lin, default), "inv" (S4D-Inv), "legs" (S4D-LegS) or "ptd" (S4-PTD's
            perturbed-then-diagonalised LegS).
        dt_min, dt_max: dt_h is initialised log-uniformly in [dt_min, dt_max].
        activation: "glu" (default), "gelu" or "none".
    """

    modes = ("conv", "recurrent")

    def __init__(self, d_model: int, *, d_state: int = 64, init: str = "lin",
                 dt_min: float = 1e-3, dt_max: float = 1e-1, activation: str = "glu"):
        super().__init__(d_model)
        _check("s4d", d_state, dt_min, dt_max, even=2)
        self.init = check_choice("s4d init", init, S4D_INITS)
        self.activation = check_choice("s4d activation", activation, ACTIVATIONS)
        self.d_state = d_state
        Lam = s4d_init(init, d_state)  # (n,)
        self.log_dt = _log_dt(d_model, dt_min, dt_max)  # (h,)
        self.log_neg_A_real = nn.Parameter(_here((-Lam.real).log().repeat(d_model, 1)))
        self.A_imag = nn.Parameter(_here(Lam.imag.repeat(d_model, 1)))  # (h, n)
        self.C = nn.Parameter(torch.randn(d_model, d_state // 2, 2) * 0.5 ** 0.5)  # (h, n, 2)
        self.D = nn.Parameter(torch.randn(d_model))  # (h,)
        self.out = _Output(d_model, self.activation)

    def A(self) -> Tensor:
        """The continuous diagonal A (h, n), complex."""
        return torch.complex(-self.log_neg_A_real.exp(), self.A_imag)

    def discrete(self) -> tuple[Tensor, Tensor, Tensor]:
        """a, b (h, n) by ZOH and the read-out 2 C (h, n), complex."""
        A = self.A()
        a, b = discretize_zoh(A, torch.ones_like(A), self.log_dt.exp()[:, None], diagonal=True)
        return a, b, 2 * _complex(self.C)

    def _forward(self, x, state, mode, chunk_size):
        y, s = diag_ssm(x, *self.discrete(), state=_complex(state), mode=mode)
        return self.out(y + self.D * x), _real(s)

    def _step(self, x_t, state):
        y, s = diag_ssm_step(x_t, *self.discrete(), _complex(state))
        return self.out(y + self.D * x_t), _real(s)

    def init_state(self, batch_size, *, device=None, dtype=None):
        return torch.zeros(batch_size, self.d_model, self.d_state // 2, 2,
                           **self.state_options(device, dtype))

    def state_size(self):
        return self.d_model * (self.d_state // 2) * 2

    @torch.no_grad()
    def timescales(self) -> Tensor:
        """Per channel, the slowest of its modes: max_n -1 / log|a_n| = 1 / (dt min_n
        exp(log_neg_A_real)) steps (the max, not the mean: a channel remembers as long as its
        slowest mode does)."""
        rate = self.log_dt.exp() * self.log_neg_A_real.exp().amin(-1)  # (h,)
        return 1 / rate

    def extra_repr(self):
        return (f"d_model={self.d_model}, d_state={self.d_state}, init={self.init}, "
                f"activation={self.activation}")


# ---- S5 ------------------------------------------------------------------------------------
@register("s5")
class S5(Mixer):
    """S5 (Smith, Warrington & Linderman 2023, "Simplified State Space Layers for Sequence
    Modeling"): one MIMO diagonal SSM over the whole d_model vector. Per step:

        x_t = a * x_{t-1} + B_bar u_t,   y_t = 2 Re(C~ x_t) + D * u_t,
        a = exp(dt Lambda),  B_bar = (a - 1) / Lambda * B~   (ZOH; or bilinear),

    Lambda = -exp(log_neg_A_real) + i A_imag initialised by HiPPO-N (the normal part of LegS,
    diagonalised as V diag(Lambda) V^H; init "hippo_n") or by S5-PTD (init "ptd": LegS + E
    diagonalised as V~ diag(Lambda) V~^-1, the perturb-then-diagonalise of Yu et al. 2024,
    `ops.s4.ptd`), block-diagonal with `n_blocks` copies of the order d_state / n_blocks,
    B~ = V^-1 B and C~ = C V from Lecun-normal B (d_state, d_model) and C;
    one dt per state. Conjugate symmetry: only the d_state / 2 modes with Im(Lambda) >= 0 are
    kept, hence the 2 Re. "parallel" runs the recurrence as a parallel prefix scan, "chunk" in
    chunks, "recurrent" as a loop.

    Args:
        d_model: input and output width.
        d_state: P, the latent size (d_state / 2 complex modes are stored).
        n_blocks: J blocks of HiPPO-N (d_state / n_blocks must be even).
        init: "hippo_n" (default, the diagonalised normal part of LegS) or "ptd" (S5-PTD).
        dt_min, dt_max: dt per state is initialised log-uniformly in [dt_min, dt_max].
        discretization: "zoh" (default) or "bilinear".
        activation: "glu" (default), "gelu" or "none".
    """

    modes = ("parallel", "chunk", "recurrent")

    def __init__(self, d_model: int, *, d_state: int = 64, n_blocks: int = 1,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, discretization: str = "zoh",
                 activation: str = "glu", init: str = "hippo_n"):
        super().__init__(d_model)
        check_int("s5: n_blocks", n_blocks)
        self.init = check_choice("s5 init", init, S5_INITS)
        _check("s5", d_state, dt_min, dt_max, even=2 * n_blocks)
        self.discretization = check_choice("s5 discretization", discretization, DISCRETIZATIONS)
        self.activation = check_choice("s5 activation", activation, ACTIVATIONS)
        self.d_state, self.n_blocks = d_state, n_blocks
        m = d_state // n_blocks
        if init == "hippo_n":
            Lam, V = hippo_n(m, device="cpu")  # (m,), (m, m)
            Lam, V = Lam[: m // 2], V[:, : m // 2]
            W = V.conj().T  # (m/2, m): the rows that read the kept modes
        else:
            Lam, V, W = ptd_half("legs", m)
        Lam = Lam.repeat(n_blocks)
        V, W = torch.block_diag(*[V] * n_blocks), torch.block_diag(*[W] * n_blocks)
        # B, C drawn on the default device (no draw at all on the meta device)
        B = torch.randn(d_state, d_model, dtype=torch.float64) / math.sqrt(d_model)  # (P, d)
        C = torch.complex(*torch.randn(2, d_model, d_state, dtype=torch.float64)) / math.sqrt(
            2 * d_state)  # (d, P)
        V, W = V.to(B.device), W.to(B.device)  # (P, P/2), (P/2, P)
        self.log_neg_A_real = nn.Parameter(_here(torch.log(-Lam.real)))  # (P/2,)
        self.A_imag = nn.Parameter(_here(Lam.imag))  # (P/2,)
        self.B = nn.Parameter(_here(_real(W @ B.to(W.dtype))))  # (P/2, d, 2): V^-1 B
        self.C = nn.Parameter(_here(_real(C @ V)))  # (d, P/2, 2)
        self.D = nn.Parameter(torch.randn(d_model))  # (d,)
        self.log_dt = _log_dt(d_state // 2, dt_min, dt_max)  # (P/2,)
        self.out = _Output(d_model, self.activation)

    def discrete(self) -> tuple[Tensor, Tensor, Tensor]:
        """a (P/2,), B_bar (P/2, d) and the read-out 2 C~ (d, P/2), complex."""
        Lam = torch.complex(-self.log_neg_A_real.exp(), self.A_imag)
        fn = discretize_zoh if self.discretization == "zoh" else discretize_bilinear
        a, B_bar = fn(Lam, _complex(self.B), self.log_dt.exp(), diagonal=True)
        return a, B_bar, 2 * _complex(self.C)

    def _forward(self, x, state, mode, chunk_size):
        a, B_bar, C = self.discrete()
        v = torch.einsum("pd,btd->btp", B_bar, x.to(B_bar.dtype))  # (b, t, P/2)
        xs, s = diag_recurrence(a, v, state=_complex(state), mode=mode,
                                chunk_size=tuning.resolve("diag_recurrence", chunk_size))
        y = torch.einsum("dp,btp->btd", C, xs).real  # (b, t, d)
        return self.out(y + self.D * x), _real(s)

    def _step(self, x_t, state):
        a, B_bar, C = self.discrete()
        s = diag_recurrence_step(a, x_t.to(B_bar.dtype) @ B_bar.T, _complex(state))  # (b, P/2)
        y = (s @ C.T).real  # (b, d)
        return self.out(y + self.D * x_t), _real(s)

    def init_state(self, batch_size, *, device=None, dtype=None):
        return torch.zeros(batch_size, self.d_state // 2, 2, **self.state_options(device, dtype))

    def state_size(self):
        return self.d_state

    @torch.no_grad()
    def timescales(self) -> Tensor:
        """Per output channel d, the mean of the modes' e-folding times -1 / log|a_p| (steps),
        weighted by |C~_dp|^2, how strongly the channel reads each mode (the modes are shared
        by all channels, so a plain max or mean would be the same for every channel)."""
        a, _, C = self.discrete()
        tau = -1 / a.abs().log()  # (P/2,)
        w = C.abs() ** 2  # (d, P/2)
        return (w @ tau) / w.sum(-1)

    def extra_repr(self):
        return (f"d_model={self.d_model}, d_state={self.d_state}, n_blocks={self.n_blocks}, "
                f"init={self.init}, discretization={self.discretization}, "
                f"activation={self.activation}")
