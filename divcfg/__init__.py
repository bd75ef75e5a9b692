"""divcfg: diversity-rewarded classifier-free-guidance distillation (Ramé et al., 2024)."""

__version__ = "0.1.0"
