"""Offline tooling: the synthetic event simulator and model training."""
