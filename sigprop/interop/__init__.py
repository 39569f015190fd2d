"""Bridges to other frameworks: :mod:`sigprop.interop.torch` (``from_torch``, ``simulate_torch``).

Each bridge imports its framework inside its functions (an optional extra, never a hard
dependency). May import: every layer up to ``engines`` and ``analysis``.
"""
