"""The state that ops act on, and the small vocabulary every layer above shares.

* ``moments`` — the infinite-width state of a signal and of its cotangent (log-scaled Grams);
* ``arrays`` — the Monte Carlo state (log-scaled arrays on NumPy or CuPy) and its array maths;
* ``rng`` — counter-based random streams keyed by (root seed, seed, block, op, direction);
* ``inputs`` — ``sp.Inputs``: the batch of inputs with prescribed moments;
* ``params`` — ``sp.sweep``, hyperparameter validation and the evaluation context;
* ``ns`` — the numeric (numpy) and symbolic (sympy) namespaces the laws are written over.

May import: ``sigprop.errors`` only (the bottom of the house).
"""
