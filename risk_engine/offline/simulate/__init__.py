"""The simulator: a seeded synthetic event log with labels, for training and evaluation.

``simulator`` writes the log (``risk-engine simulate``); ``world`` holds the
presets of who the users and attackers are; ``core``, ``geo``, ``profiles``,
``networks``, ``benign`` and ``attacks`` are its parts, in that order of
dependence.
"""
