"""The top of the house: sim configs (``config``), their runs (``runs``), the result cache
(``cache``), the ``reproduce`` pipeline, the benchmarks (``bench``) and the ``cli``.

May import anything in sigprop; nothing in sigprop imports it.
"""
