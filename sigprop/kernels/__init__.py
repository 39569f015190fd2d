"""Gaussian integrals the laws need. Modules, lowest first:

* ``quadrature`` — fixed rules for 1-D Gaussian expectations and the activation kernels built
  from them (graded Gauss-Legendre / Gauss-Hermite, Chebyshev tables in ln q);
* ``integral`` — :class:`GaussianIntegral`, the unevaluated expectation (SYMBOLIC face), and
  :func:`integral_value`, the one numeric evaluator of such an integral;
* ``gaussian`` — the activation table: array faces, closed forms (linear, relu, erf),
  :func:`get_activation`;
* ``batchnorm`` — BatchNorm's exact infinite-width kernels (1-D t-integrals).

May import: ``sigprop.state`` and ``sigprop.errors``.
"""
