"""Reading results: ``compare`` (calibrated z-scores of theory against Monte Carlo, estimators
for heavy tails) and ``plots`` (the paper's figure style, theory lines against Monte Carlo points).

May import: the foundation modules (``errors``, ``schema``, ``data``) only.
"""
