"""The B inputs a net is run on: per-input second moment, feature mean and cosine similarity."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sigprop.errors import ConfigError
from sigprop.state.moments import GAUSSIAN, GENERAL, Moments

LAWS = ("fixed", "gaussian")
PSD_TOL = 1e-10  # smallest eigenvalue allowed below 0 for a matrix of O(1) entries (rounding)
# inputs at most: the state holds B x B per grid point and layer, and building it checks two
# B x B eigenvalue problems (4096: 128 MiB each, seconds); more would exhaust memory silently
MAX_INPUTS = 4096


@dataclass(frozen=True, init=False)
class Inputs:
    """B inputs with ``q_a = (1/N)|x_a|^2``, feature mean ``m_a`` and cosines ``c_ab``.

    ``law="fixed"``: Monte Carlo builds inputs in R^N with exactly these values; their features
    are otherwise arbitrary, so an activation applied straight to the stream is refused by the
    theory. ``law="gaussian"``: the N features are i.i.d. N(0, K) across inputs (mean must be
    0); the stream is then a sum of Gaussian parts and pre-activation branches are exact.
    """

    q: tuple[float, ...]
    mean: tuple[float, ...]
    corr: tuple[tuple[float, ...], ...]
    law: str

    def __init__(self, q=1.0, corr=0.0, mean=0.0, n: int | None = None, law: str = "fixed"):
        qa, ma, ca = (_finite(f"Inputs.{k}", v) for k, v in (("q", q), ("mean", mean), ("corr", corr)))
        sizes = [len(a) for a in (qa, ma) if a.ndim == 1]
        if ca.ndim == 2:
            sizes.append(len(ca))
        if n is not None:
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_INPUTS:
                raise ConfigError("Inputs.n", n, f"an integer in [1, {MAX_INPUTS}]")
            sizes.append(int(n))
        if len(set(sizes)) > 1:
            raise ConfigError("Inputs sizes (q, mean, corr, n)", sizes, "all the same number of inputs")
        B = sizes[0] if sizes else 1
        if B > MAX_INPUTS:
            raise ConfigError("Inputs (q, mean, corr, n)", f"{B} inputs", f"at most {MAX_INPUTS}")
        if B == 0:
            raise ConfigError("Inputs.q", q, "at least one input (a number or a non-empty list)")
        qv = _vector("Inputs.q", q, qa, B)
        mv = _vector("Inputs.mean", mean, ma, B)
        if np.any(qv <= 0):
            raise ConfigError("Inputs.q", q, "> 0 for every input (second moment)")
        with np.errstate(over="ignore"):  # |m| / sqrt(q) = inf is refused just below
            mu = mv / np.sqrt(qv)  # the mean in units of the input's scale
        if np.any(np.abs(mu) > 1 + 5e-13):  # mean^2 <= q, up to rounding
            raise ConfigError("Inputs.mean", mean, "mean^2 <= q for every input (variance >= 0)")
        # a mean within rounding of sqrt(q) (q and mean measured on constant features): the
        # largest whose square is <= q, so that the variance q - mean^2 is >= 0, not -1e-14
        # (a LayerNorm of it had a negative q, and log q NaN)
        root = np.sqrt(qv)
        root = np.where(root * root > qv, np.nextafter(root, 0), root)
        mv = np.where(mv * mv > qv, np.sign(mv) * root, mv)
        C = _matrix("Inputs.corr", corr, ca, B)
        if law not in LAWS:
            raise ConfigError("Inputs.law", law, f"one of {LAWS}")
        if law == "gaussian" and np.any(mv != 0):
            raise ConfigError("Inputs.mean", mean, "0 when law='gaussian' (features are N(0, K))")
        # PSD checks on scale-free matrices (K = D C D with D = diag(sqrt q) would overflow or
        # underflow at q = 1e200 or 1e-200): K >= 0 iff C >= 0, and K - m m^T >= 0 iff
        # C - mu mu^T >= 0 with mu = m / sqrt(q) (congruence by D^-1); entries are O(1).
        if np.linalg.eigvalsh(C).min() < -PSD_TOL:
            raise ConfigError("Inputs.corr", corr, "a positive semi-definite correlation matrix")
        if np.linalg.eigvalsh(C - np.outer(mu, mu)).min() < -PSD_TOL:
            raise ConfigError("Inputs (corr, mean)", (corr, mean),
                              "a centred Gram K - m m^T that is positive semi-definite")
        object.__setattr__(self, "q", tuple(qv))
        object.__setattr__(self, "mean", tuple(mv))
        object.__setattr__(self, "corr", tuple(map(tuple, C)))
        object.__setattr__(self, "law", law)

    @property
    def n(self) -> int:
        return len(self.q)

    @property
    def gram(self) -> np.ndarray:
        """K_ab = c_ab sqrt(q_a) sqrt(q_b) (no overflow of q_a q_b at q = 1e300)."""
        r = np.sqrt(np.asarray(self.q))
        return np.asarray(self.corr) * np.outer(r, r)

    def moments(self) -> Moments:
        """Infinite-width state of the inputs, canonically scaled (unit diagonal)."""
        q = np.asarray(self.q)
        return Moments(K=np.asarray(self.corr, dtype=float), m=np.asarray(self.mean) / np.sqrt(q),
                       ls=0.5 * np.log(q), law=GAUSSIAN if self.law == "gaussian" else GENERAL)

    def to_dict(self) -> dict:
        return {"q": list(self.q), "mean": list(self.mean), "corr": [list(r) for r in self.corr],
                "law": self.law}

    @classmethod
    def from_dict(cls, d: dict) -> Inputs:
        return cls(q=d["q"], mean=d["mean"], corr=d["corr"], law=d.get("law", "fixed"))


def _finite(field, value):
    """``value`` as a float array; numbers only (numpy would read '0' or True as numbers)."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):  # ragged nesting
        arr = np.asarray(None)
    if arr.dtype.kind not in "iuf":
        raise ConfigError(field, value, "real numbers: a number, a list or a matrix")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(field, value, "finite numbers")
    return arr.astype(float)


def _vector(field, value, arr, B):
    if arr.ndim > 1:
        raise ConfigError(field, value, f"a number or a list of {B}")
    return np.broadcast_to(arr, (B,)).astype(float)


def _matrix(field, value, arr, B):
    if np.any(np.abs(arr) > 1):  # (a number is a cosine whatever B is: at B = 1 it goes unused)
        raise ConfigError(field, value, "cosines in [-1, 1]")
    if arr.ndim == 0:
        C = np.full((B, B), float(arr))
        np.fill_diagonal(C, 1.0)
    elif arr.shape == (B, B):
        C = arr
        if not np.allclose(C, C.T) or not np.allclose(np.diag(C), 1.0):
            raise ConfigError(field, value, "a symmetric matrix with unit diagonal")
    else:
        raise ConfigError(field, value, f"a number or a {B}x{B} matrix")
    return C
