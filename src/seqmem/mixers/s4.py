"""S4: the structured state-space layer with a diagonal-plus-low-rank state matrix.

Every channel h is a SISO SSM x' = A_h x + B_h u, y = C_h x + D_h u of state size N whose A
is, in the basis that diagonalises the normal part of a HiPPO matrix, diag(Lambda_h) -
P_h P_h^* (normal plus low rank, NPLR / DPLR), discretised by the bilinear transform with a
trainable step dt_h. The layer is a long convolution ("conv": S4's Cauchy kernel with the
Woodbury correction at the roots of unity, then an FFT convolution) and a linear RNN
("recurrent": the Woodbury step). The ops are in `seqmem.ops.s4`; the output nonlinearity is
S4D's (`activation`, see `seqmem.mixers.ssm`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seqmem.errors import check_choice
from seqmem.mixers.base import Mixer, register
from seqmem.mixers.ssm import ACTIVATIONS, _check, _complex, _here, _log_dt, _Output, _real
from seqmem.ops.s4 import MEASURES, hippo, nplr, ptd_half, s4, s4_discrete, s4_step

S4_INITS = ("nplr", "ptd")
# the largest Re(Lambda) at initialisation: the Cauchy kernel needs Re < 0, and its sums lose
# about log10(1 / |Re|) digits to the Woodbury correction near a mode of Re ~ 0
RE_MAX = -1e-2


@register("s4")
class S4(Mixer):
    """S4 (Gu, Goel & Re 2022, "Efficiently Modeling Long Sequences with Structured State
    Spaces"). Per channel h, with n = d_state / 2 stored modes (their conjugates implied):

        A_h = diag(Lambda_h) - P_h P_h^*,   Lambda = -exp(log_neg_A_real) + i A_imag,
        x_t = A_bar x_{t-1} + B_bar u_t,   y_t = 2 Re(C_h . x_t) + D_h u_t,
        A_bar = (2/dt - A)^-1 (2/dt + A),  B_bar = (2/dt - A)^-1 2 B   (bilinear),

    then the output nonlinearity. Since Re(Lambda) < 0 and P P^* >= 0, A's Hermitian part is
    negative definite: every A is stable, whatever training does. init "nplr" starts at the
    HiPPO matrix of `measure` exactly (Lambda, P, B from its NPLR form, `ops.s4.nplr`; for LegT
    and FouT, whose normal part is skew, Re(Lambda) starts at -0.01 instead of 0); init "ptd"
    at S4-PTD (Yu et al. 2024): Lambda and B = V~^-1 B_HiPPO from the perturb-then-diagonalise
    eigendecomposition of A_HiPPO + E (`ops.s4.ptd`), a diagonal system with no low-rank
    term (rank 0). C is drawn complex normal, D normal, dt log-uniform.

    "conv" computes the kernel K_l = C A_bar^l B_bar from its generating function at the
    roots of unity (Cauchy kernel + Woodbury identity, the (I - A_bar^L) correction applied to
    C), convolves by FFT, and adds the initial state's part and computes the final state the
    same way (`ops.s4.s4`); "recurrent" is the loop of the Woodbury step.

    Args:
        d_model: channels (input and output width).
        d_state: N, state floats per channel (even; N/2 complex modes are stored).
        measure: the HiPPO basis: "legs" (default, scaled Legendre), "legt" (Legendre on a
            sliding window) or "fout" (Fourier on a sliding window).
        init: "nplr" (default, the HiPPO matrix in NPLR form) or "ptd" (S4-PTD).
        dt_min, dt_max: dt_h is initialised log-uniformly in [dt_min, dt_max].
        activation: "glu" (default), "gelu" or "none".
    """

    modes = ("conv", "recurrent")

    def __init__(self, d_model: int, *, d_state: int = 64, measure: str = "legs",
                 init: str = "nplr", dt_min: float = 1e-3, dt_max: float = 1e-1,
                 activation: str = "glu"):
        super().__init__(d_model)
        _check("s4", d_state, dt_min, dt_max, even=2)
        self.measure = check_choice("s4 measure", measure, MEASURES)
        self.init = check_choice("s4 init", init, S4_INITS)
        self.activation = check_choice("s4 activation", activation, ACTIVATIONS)
        self.d_state = d_state
        if init == "nplr":
            Lam, P, B, _ = nplr(measure, d_state, device="cpu")  # (n,), (r, n), (n,)
        else:
            Lam, _, Vinv = ptd_half(measure, d_state)
            B = Vinv @ hippo(measure, d_state, device="cpu")[1].to(Vinv.dtype)  # (n,)
            P = B.new_zeros(0, d_state // 2)
        h = d_model
        self.log_neg_A_real = nn.Parameter(_here((-Lam.real).clamp(min=-RE_MAX).log()
                                                 .repeat(h, 1)))  # (h, n)
        self.A_imag = nn.Parameter(_here(Lam.imag.repeat(h, 1)))  # (h, n)
        self.P = nn.Parameter(_here(_real(P)[:, None].repeat(1, h, 1, 1)))  # (r, h, n, 2)
        self.B = nn.Parameter(_here(_real(B).repeat(h, 1, 1)))  # (h, n, 2)
        self.C = nn.Parameter(torch.randn(h, d_state // 2, 2) * 0.5 ** 0.5)  # (h, n, 2)
        self.D = nn.Parameter(torch.randn(h))  # (h,)
        self.log_dt = _log_dt(h, dt_min, dt_max)  # (h,)
        self.out = _Output(d_model, self.activation)

    def Lam(self) -> Tensor:
        """The diagonal Lambda (h, n), complex."""
        return torch.complex(-self.log_neg_A_real.exp(), self.A_imag)

    def params(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(Lambda (h, n), P (r, h, n), B (h, n), C (h, n), dt (h,)) as the ops take them."""
        return (self.Lam(), _complex(self.P), _complex(self.B), _complex(self.C),
                self.log_dt.exp())

    def _forward(self, x, state, mode, chunk_size):
        y, s = s4(x, *self.params(), state=_complex(state), mode=mode)
        return self.out(y + self.D * x), _real(s)

    def _step(self, x_t, state):
        y, s = s4_step(x_t, *self.params(), _complex(state))
        return self.out(y + self.D * x_t), _real(s)

    def init_state(self, batch_size, *, device=None, dtype=None):
        return torch.zeros(batch_size, self.d_model, self.d_state // 2, 2,
                           **self.state_options(device, dtype))

    def state_size(self):
        return self.d_model * self.d_state

    @torch.no_grad()
    def timescales(self) -> Tensor:
        """Per channel, the slowest mode of A_bar: max -1 / log|a| over the eigenvalues a of
        the discretised full matrix (steps)."""
        Lam, P, B, _, dt = (p.double() if p.is_floating_point() else p.cdouble()
                            for p in self.params())
        a = torch.linalg.eigvals(s4_discrete(Lam, P, B, dt)[0])  # (h, N)
        mag = a.abs().amax(-1).clamp(max=1 - 1e-12)
        return (-1 / mag.log()).to(self.C.dtype)

    def extra_repr(self):
        return (f"d_model={self.d_model}, d_state={self.d_state}, measure={self.measure}, "
                f"init={self.init}, activation={self.activation}")

