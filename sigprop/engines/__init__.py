"""The engines that run a net: ``theory`` (infinite width, vectorised over sweeps, log-scaled,
forward and backward) and ``montecarlo`` (finite-width random nets on NumPy or CuPy, with the
weight ``samplers``). Both ask each op for its faces; neither knows an op type.

May import: ``sigprop.ops``, ``sigprop.kernels``, ``sigprop.state`` and the foundation modules
(``errors``, ``schema``, ``provenance``).
"""
