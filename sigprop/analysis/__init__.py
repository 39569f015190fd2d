"""Reading results: ``compare`` (calibrated z-scores of theory against Monte Carlo, estimators
for heavy tails), ``plots`` (the paper's figure style, theory lines against Monte Carlo points)
and ``plot`` (``sp.plot``: any variable against any dim, faceted as in xarray).

May import: the foundation modules (``errors``, ``schema``, ``data``) only.
"""
