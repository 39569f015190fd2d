"""Gaussian integrals the laws need: activation kernels (closed forms and quadrature) and
BatchNorm's exact infinite-width kernels (1-D t-integrals).

May import: ``sigprop.state`` and ``sigprop.errors``.
"""
