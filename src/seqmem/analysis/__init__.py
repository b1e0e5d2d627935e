"""Analysis of trained models: timescales, ablation, perturbation, forgetting, dynamics.

- `registry`: `@analysis` and `@figure`, how an analysis and its report figure are declared;
- `analyze`: `analyze_run` runs the registered analyses of a stored run (analysis.json), and
  `headline` picks the numbers the store indexes;
- `context`: what an analysis sees (the run's stage models, its options, its own generator);
- the built-in analyses: `stages` (timescales, tau_net, dimensionality), `ablation`,
  `perturbation`, `forgetting`, `pruning` (accuracy against sparsity, tau of pruned units),
  `lr_law` (the loss against the learning-rate schedule, Tissue et al. 2024);
- `richness`: rich and lazy learning (weight change, effective rank, tangent-kernel
  alignment with the initial model; Liu et al. 2023);
- the measures they use: `probes` (streaming accuracy, silencing, perturbing, forgetting
  matrix), `timescales` (autocorrelation fits, tau_net, dimensionality) and `dynamics`
  (D_stsp, D_H and free running for dynamical-systems reconstruction);
- `symbolic`: the symbolic code of a piecewise-linear RNN (al_rnn, plrnn): its subregion at
  each step of a free run, the transition graph and its cycles (Brenner et al. 2024).
"""

# The built-in analyses register themselves on import, in this order: the order of ANALYSES.
# A new analysis module is imported here.
# isort: off
from seqmem.analysis import stages, ablation, perturbation, forgetting, pruning, lr_law
from seqmem.analysis import symbolic
from seqmem.analysis import richness

# isort: on

__all__ = ["ablation", "forgetting", "lr_law", "perturbation", "pruning", "richness", "stages",
           "symbolic"]
