"""Analysis of trained models: timescales, ablation, perturbation, forgetting."""
