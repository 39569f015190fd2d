"""The symbol table: every derivation and every map speaks of the same sympy objects."""

from __future__ import annotations

import sympy

SIGMA_W = sympy.Symbol("sigma_w", positive=True)
SIGMA_1 = sympy.Symbol("sigma_1", positive=True)
SIGMA_2 = sympy.Symbol("sigma_2", positive=True)
SIGMA_B = sympy.Symbol("sigma_b", nonnegative=True)
ALPHA = sympy.Symbol("alpha", real=True)
BETA = sympy.Symbol("beta", positive=True)
EPS = sympy.Symbol("eps", nonnegative=True)
GAIN = sympy.Symbol("gain", positive=True)  # a sign flip of every feature changes no moment
RATIO = sympy.Symbol("ratio", positive=True)
B_DN = sympy.Symbol("b", positive=True)  # DeepNet's initialisation gain of the branch Denses

Q_A, Q_B = sympy.symbols("q_a q_b", positive=True)
_V_A, _V_B = sympy.symbols("v_a v_b", positive=True)  # q - m^2 inside the maps (see state)
M_A, M_B = sympy.symbols("m_a m_b", real=True)
C_AB = sympy.Symbol("c_ab", real=True)
G_A, G_B = sympy.symbols("g_a g_b", positive=True)

l = sympy.Symbol("l", integer=True, nonnegative=True)  # the depth index
L = sympy.Symbol("L", integer=True, positive=True)
Q0 = sympy.Symbol("q_0", positive=True)
M0 = sympy.Symbol("m_0", real=True)
C0 = sympy.Symbol("c_0", real=True)

ONE_MINUS_C = sympy.Symbol("varepsilon", positive=True)  # 1 - c, near c = 1
SQRT_ONE_MINUS_C = sympy.Symbol("t", positive=True)  # sqrt(1 - c)

# display-only symbols for the left-hand sides of the equations the derivations write
G_0, G_L, Q_L, Q_l, C_L = sympy.symbols("g_0 g_L q_L q_l c_L", positive=True)

SYMBOLS = {s.name: s for s in (SIGMA_W, SIGMA_1, SIGMA_2, SIGMA_B, ALPHA, BETA, EPS, GAIN, RATIO,
                               B_DN, Q_A, Q_B, M_A, M_B, C_AB, G_A, G_B, l, L, Q0, M0, C0)}

LATEX_NAMES = {GAIN: r"\gamma", EPS: r"\epsilon", B_DN: "b", C_AB: "c_{ab}", Q0: "q_0",
               M0: "m_0", C0: "c_0"}

DEEPNET = {BETA: L ** sympy.Rational(1, 4), B_DN: (4 * L) ** sympy.Rational(-1, 4)}
"""DeepNet encoder constants (Wang et al. 2022) in terms of the number L of residual blocks, as
presets.deepnorm's default (DeepNet's N = L/2 layers of two sublayers: (2N)^{1/4}, (8N)^{-1/4})."""


def canonical_symbols(expr):
    """Replace assumption-free symbols (e.g. from a ``Sweep``) by the table's namesakes."""
    expr = sympy.sympify(expr)
    subs = {s: SYMBOLS[s.name] for s in expr.free_symbols
            if s.name in SYMBOLS and s != SYMBOLS[s.name]}
    return expr.xreplace(subs) if subs else expr


def latex(expr) -> str:
    """sympy.latex with the table's display names (gain -> gamma, eps -> epsilon, ...)."""
    return sympy.latex(expr, symbol_names=LATEX_NAMES)
