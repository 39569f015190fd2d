"""The op vocabulary. Each op owns all its faces in one place.

Faces (an op adds a face by adding methods here, never a parallel module):

* ``theory_forward(s, ctx, record)`` and ``theory_backward(s, g, ctx)``: the infinite-width law
  on :class:`~sigprop.moments.Moments`, written once over ``ctx.ns`` so that the numeric
  (numpy) and the symbolic (sympy) faces are the same source;
* the Monte Carlo face (forward on arrays and its vector-Jacobian product) lives beside it.

Conventions are those of DESIGN.md: ``Dense`` draws ``W_ij ~ N(0, sigma_w^2 / n_in)``,
``b_i ~ N(0, sigma_b^2)``, ``n_out = ratio * n_in``; ``Residual`` maps x to
``beta x + alpha branch(x)``. The backward laws pull the gradient Gram back under an
independent readout (the cotangent at the top is drawn independently of the net), for which
cotangents have feature mean 0 and are uncorrelated with the forward features.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import sympy

from . import mc_core as mc
from .activations import get_activation
from .batchnorm_kernel import bn_activation, bn_backward, bn_forward, bn_relu_backward, centred_cov
from .errors import ConfigError, UnsupportedComposition
from .mc_rng import BIAS
from .moments import DECOUPLED, BNLaw, Gate, Moments, Ref, affine, mix, outer, true_moments
from .params import Context, Sweep, check

_POSITIVE = (lambda x: x > 0, "> 0")
_NONNEG = (lambda x: x >= 0, ">= 0")
_FINITE = (lambda x: True, "a finite number")


def _vec(p):
    """A grid-shaped parameter as a per-input vector (..., 1)."""
    return p[..., None]


class Op:
    """Base of every op: validation, printing as a tree, (de)serialisation."""

    REGISTRY: ClassVar[dict[str, type]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        Op.REGISTRY[cls.__name__] = cls

    # -- structure ------------------------------------------------------------------------
    def children(self) -> tuple[Op, ...]:
        return ()

    def label(self) -> str:
        args = ", ".join(f"{f.name}={_fmt(getattr(self, f.name))}" for f in dataclasses.fields(self)
                         if not isinstance(getattr(self, f.name), (Op, tuple)))
        return f"{type(self).__name__}({args})"

    def tree(self, prefix: str = "") -> str:
        lines = [self.label()]
        kids = self.children()
        for i, kid in enumerate(kids):
            last = i == len(kids) - 1
            sub = kid.tree(prefix + ("    " if last else "│   "))
            lines.append(prefix + ("└── " if last else "├── ") + sub)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.tree()

    def walk(self):
        yield self
        for kid in self.children():
            yield from kid.walk()

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"op": type(self).__name__}
        for f in dataclasses.fields(self):
            out[f.name] = _encode(getattr(self, f.name))
        return out

    # -- theory face ----------------------------------------------------------------------
    def theory_forward(self, s: Moments, ctx: Context, record: dict | None = None) -> Moments:
        raise NotImplementedError

    def theory_backward(self, s: Moments, g: Moments, ctx: Context) -> Moments:
        """Pull the cotangent moments ``g`` at this op's output back to its input ``s``."""
        raise NotImplementedError

    # -- Monte Carlo face (arrays (seeds, inputs, width) in log-scaled form, sigprop.mc_core) ---
    def mc_forward(self, x: mc.Sig, env: mc.Env, record: dict | None = None):
        """Forward on a batch of signals; returns (output, residuals that mc_vjp needs)."""
        raise NotImplementedError

    def mc_vjp(self, res, g: mc.Sig, env: mc.Env) -> mc.Sig:
        """Vector-Jacobian product: the cotangent ``g`` at the output pulled back to the input."""
        raise NotImplementedError

    def mc_ops(self) -> int:
        """How many op indices (names of random streams) this op and its children take."""
        return 1 + sum(kid.mc_ops() for kid in self.children())


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, Sweep):
        return f"sweep({v.name!r}, n={len(v.values)})"
    return repr(v)


def _encode(v):
    if isinstance(v, Op):
        return v.to_dict()
    if isinstance(v, tuple):
        return [_encode(x) for x in v]
    if isinstance(v, Sweep):
        return {"sweep": v.name, "values": list(v.values)}
    if isinstance(v, sympy.Basic):
        return {"sympy": sympy.srepr(v)}
    return v


def _decode(v):
    if isinstance(v, dict) and "op" in v:
        return op_from_dict(v)
    if isinstance(v, dict) and "sweep" in v:
        return Sweep(v["sweep"], tuple(v["values"]))
    if isinstance(v, dict) and "sympy" in v:
        return sympy.sympify(v["sympy"])
    if isinstance(v, list):
        return tuple(_decode(x) for x in v)
    return v


def op_from_dict(d: dict) -> Op:
    """Inverse of :meth:`Op.to_dict`."""
    cls = Op.REGISTRY.get(d.get("op"))
    if cls is None:
        raise ConfigError("op", d.get("op"), f"one of {sorted(Op.REGISTRY)}")
    kwargs = {k: _decode(v) for k, v in d.items() if k != "op"}
    if cls is Serial:
        return Serial(*kwargs["layers"])
    return cls(**kwargs)


def _cotangent_affine(g: Moments, a, ls_shift) -> Moments:
    """Backward of y = a (x - t): G_in = a_a a_b G (cotangent mean 0), log scale shifted."""
    return affine(g, a, None, g.ls + ls_shift)


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dense(Op):
    """y = W x + b, W_ij ~ N(0, sigma_w^2/n_in), b_i ~ N(0, sigma_b^2), n_out = ratio n_in.

    Forward: K' = sigma_w^2 K + sigma_b^2, m' = 0, features Gaussian and independent of the
    input's features (cross moments decouple). Backward: G_in = sigma_w^2 ratio G_out.
    """

    sigma_w: Any = 1.0
    sigma_b: Any = 0.0
    ratio: Any = 1.0

    def __post_init__(self):
        object.__setattr__(self, "sigma_w", check("Dense.sigma_w", self.sigma_w, *_NONNEG))
        object.__setattr__(self, "sigma_b", check("Dense.sigma_b", self.sigma_b, *_NONNEG))
        object.__setattr__(self, "ratio", check("Dense.ratio", self.ratio, *_POSITIVE))

    def theory_forward(self, s, ctx, record=None):
        ns = ctx.ns
        sw2, sb2 = np.asarray(ctx.p(self.sigma_w) ** 2), np.asarray(ctx.p(self.sigma_b) ** 2)
        e = ns.exp(-s.ls)
        K = sw2[..., None, None] * s.K + sb2[..., None, None] * outer(e, e)
        refs = tuple(Ref(m=r.m, X=DECOUPLED) for r in s.refs)
        return Moments(K=K, m=0 * s.m, ls=s.ls + 0 * sw2[..., None], gaussian=True, refs=refs)

    def theory_backward(self, s, g, ctx):
        gain = np.asarray(ctx.p(self.sigma_w) ** 2 * ctx.p(self.ratio))  # 0-d object stays an array
        refs = tuple(Ref(m=r.m, X=DECOUPLED) for r in g.refs)
        return g.replace(K=gain[..., None, None] * g.K, refs=refs)

    def mc_forward(self, x, env, record=None):
        """A = X W^T by ``env.sampler`` (W acts on the scaled signal: ls unchanged), plus b."""
        n_in = x.x.shape[-1]
        n_out = mc.dense_width(n_in, self.ratio)
        a, res = env.sampler.forward(x.x, self.sigma_w / n_in**0.5, n_out, env)
        y = mc.Sig(a, x.ls)
        if self.sigma_b:
            b = mc.Sig(env.normal(BIAS, (1, n_out)), env.xp.zeros_like(x.ls[:, :1]))
            y = mc.mix(1.0, y, self.sigma_b, b)
        return y, (n_in, res)

    def mc_vjp(self, res, g, env):
        n_in, res = res
        return mc.Sig(env.sampler.vjp(res, g.x, self.sigma_w / n_in**0.5, env), g.ls)


@dataclass(frozen=True)
class Act(Op):
    """Elementwise activation phi. Needs jointly Gaussian pre-activations (a Dense before it), or
    for relu and linear a (rescaled) BatchNorm output.

    Forward: K'_ab = E[phi(u_a) phi(u_b)], m'_a = E[phi(u_a)], u ~ N(0, K); a cross moment still
    coupled to the residual input follows Stein's lemma, X' = m_r E[phi]^T + X diag E[phi'].
    Backward: G_in = E[phi'(u_a) phi'(u_b)] * G_out.
    After BatchNorm (z = D P u / s): phi(z) = phi(D P u) / s for phi of degree 1, so K' and m'
    are 1-D t-integrals of the Gaussian faces (:func:`~sigprop.batchnorm_kernel.bn_activation`);
    Stein's lemma holds under every tilt of the t-integral, so X' is as above; and phi'(z) =
    phi'(D P u), so the backward is the Gaussian grad kernel at D P S P D.
    """

    name: str = "relu"

    def __post_init__(self):
        get_activation(self.name)  # raises ConfigError naming the allowed activations

    def _pre(self, s, ctx):
        """(act, K, ls): the Gram of the Gaussian pre-activation in the units the kernel is
        evaluated in; after BatchNorm, that of D P u (true units), which has phi's sign pattern."""
        act = get_activation(self.name)
        if s.bn is not None:
            if act.degree != 1:
                raise UnsupportedComposition(
                    f"{ctx.path}: Act({self.name!r}) directly after BatchNorm: the BatchNorm "
                    "output is not Gaussian, and sigprop integrates it exactly only through "
                    "positively homogeneous activations (relu, linear), where phi(Pu/s) = "
                    "phi(Pu)/s turns it into a 1-D integral. For this activation the law is a "
                    f"(B-1)-dimensional integral; put a Dense between BatchNorm and "
                    f"Act({self.name!r}), or use sp.simulate.")
            return act, centred_cov(s.bn.S, s.bn.scale), 0 * s.ls
        if not s.gaussian:
            raise UnsupportedComposition(
                f"{ctx.path}: Act({self.name!r}) meets a stream whose features are not jointly "
                "Gaussian (e.g. the input, a residual sum with a non-Gaussian part, or a "
                "BatchNorm output), so its infinite-width law is not a Gaussian integral. Put a "
                "Dense before the activation, or use Inputs(law='gaussian') when the stream is "
                "a sum of Gaussian parts.")
        if act.degree == 1:  # phi(lambda u) = lambda phi(u): evaluate at the scaled Gram
            return act, s.K, s.ls
        K, _ = true_moments(s, ctx.path, ctx.ns)
        return act, K, 0 * s.ls

    def theory_forward(self, s, ctx, record=None):
        ns = ctx.ns
        act, K, ls = self._pre(s, ctx)
        d = np.diagonal(K, axis1=-2, axis2=-1)
        if s.bn is None:
            K_out, m = act.gram_kernel(K, ns), act.mean(d, ns)
        else:
            K_out, m = bn_activation(s.bn.S, s.bn.eps, s.bn.scale, act)
        refs = []
        for r in s.refs:
            if r.X is DECOUPLED or r.X is None:
                refs.append(r)
            else:
                slope = act.grad_mean(d, ns) * ns.exp(s.ls - ls)
                refs.append(Ref(m=r.m, X=outer(r.m, m) + s.cross(r) * slope[..., None, :]))
        return Moments(K=K_out, m=m, ls=ls, gaussian=False, refs=tuple(refs))

    def theory_backward(self, s, g, ctx):
        ns = ctx.ns
        act, K, _ = self._pre(s, ctx)
        d = np.diagonal(K, axis1=-2, axis2=-1)
        refs = tuple(r if r.X is DECOUPLED or r.X is None
                     else Ref(m=r.m, X=r.X * act.grad_mean(d, ns)[..., None, :]) for r in g.refs)
        gate = None
        if s.bn is not None and act.name != "linear":  # relu'(z) and the BN before share u
            gate = Gate(H=g.K, signs=np.sign(s.bn.scale))
        return g.replace(K=act.gram_grad_kernel(K, ns) * g.K, refs=refs, gate=gate)

    def mc_forward(self, x, env, record=None):
        """phi on the scaled signal when phi(c u) = c phi(u) (c > 0), else on the true one."""
        act = get_activation(self.name)
        if act.degree == 1:
            return mc.Sig(act.fn(x.x, env.xp), x.ls), x.x
        u = mc.times(x.x, mc.true_scale(x.ls, x.x.dtype))
        return mc.Sig(act.fn(u, env.xp).astype(u.dtype), env.xp.zeros_like(x.ls)), u

    def mc_vjp(self, res, g, env):
        """g phi'(u); phi' is scale free when phi is positively homogeneous."""
        grad = get_activation(self.name).grad(res, env.xp)
        return mc.Sig(g.x * grad.astype(g.x.dtype, copy=False), g.ls)


@dataclass(frozen=True)
class LayerNorm(Op):
    """y = gain (x - mean(x)) / sqrt(var(x) + eps) over features (biased variance).

    Forward: K' = gain^2 (K - m m^T)_ab / sqrt((v_a + eps)(v_b + eps)), m' = 0. Backward (the
    Jacobian (gain/s)(P - y y^T/N) against a mean-zero independent cotangent):
    G_in = gain^2 G_ab / sqrt((v_a + eps)(v_b + eps)).
    """

    eps: Any = 1e-5
    gain: Any = 1.0

    def __post_init__(self):
        object.__setattr__(self, "eps", check("LayerNorm.eps", self.eps, *_NONNEG))
        object.__setattr__(self, "gain", check("LayerNorm.gain", self.gain, *_FINITE))

    def _scale(self, s, ctx):
        v = np.diagonal(s.K, axis1=-2, axis2=-1) - s.m * s.m
        eps = _vec(ctx.p(self.eps)) * ctx.ns.exp(-2 * s.ls)
        return _vec(ctx.p(self.gain)) / ctx.ns.sqrt(v + eps)

    def theory_forward(self, s, ctx, record=None):
        a = self._scale(s, ctx)
        return affine(s, a, s.m, 0 * a)

    def theory_backward(self, s, g, ctx):
        return _cotangent_affine(g, self._scale(s, ctx), -s.ls)

    def mc_forward(self, x, env, record=None):
        return mc.feature_norm(x, self.eps, self.gain, center=True)

    def mc_vjp(self, res, g, env):
        return mc.feature_norm_vjp(res, g, self.gain, center=True)


@dataclass(frozen=True)
class RMSNorm(Op):
    """y = x / sqrt(mean(x^2) + eps). K' = K_ab / sqrt((q_a + eps)(q_b + eps)); G likewise."""

    eps: Any = 1e-5

    def __post_init__(self):
        object.__setattr__(self, "eps", check("RMSNorm.eps", self.eps, *_NONNEG))

    def _scale(self, s, ctx):
        q = np.diagonal(s.K, axis1=-2, axis2=-1)
        return 1 / ctx.ns.sqrt(q + _vec(ctx.p(self.eps)) * ctx.ns.exp(-2 * s.ls))

    def theory_forward(self, s, ctx, record=None):
        a = self._scale(s, ctx)
        return affine(s, a, None, 0 * a)

    def theory_backward(self, s, g, ctx):
        return _cotangent_affine(g, self._scale(s, ctx), -s.ls)

    def mc_forward(self, x, env, record=None):
        return mc.feature_norm(x, self.eps, 1.0, center=False)

    def mc_vjp(self, res, g, env):
        return mc.feature_norm_vjp(res, g, 1.0, center=False)


@dataclass(frozen=True)
class Scale(Op):
    """y = c x. K' = c^2 K, m' = c m; G_in = c^2 G."""

    c: Any = 1.0

    def __post_init__(self):
        object.__setattr__(self, "c", check("Scale.c", self.c, *_FINITE))

    def theory_forward(self, s, ctx, record=None):
        a = _vec(ctx.p(self.c)) + 0 * s.m
        return affine(s, a, None, s.ls + 0 * a)

    def theory_backward(self, s, g, ctx):
        return _cotangent_affine(g, _vec(ctx.p(self.c)) + 0 * g.m, 0)

    def mc_forward(self, x, env, record=None):
        return mc.Sig(self.c * x.x, x.ls), None

    def mc_vjp(self, res, g, env):
        return mc.Sig(self.c * g.x, g.ls)


@dataclass(frozen=True)
class BatchNorm(Op):
    """Per feature over the batch of inputs: y = P u / sqrt(|P u|^2 / B + eps), P = I - 11^T/B.

    Needs jointly Gaussian inputs (a Dense before it, or Gaussian inputs); its kernel and its
    batch-coupled backward are exact 1-D integrals (:mod:`sigprop.batchnorm_kernel`). The output
    carries its law (:class:`~sigprop.moments.BNLaw`) for a relu or linear Act after it.
    """

    eps: Any = 1e-5

    def __post_init__(self):
        object.__setattr__(self, "eps", check("BatchNorm.eps", self.eps, *_NONNEG))

    def _cov(self, s, ctx):
        if ctx.ns.symbolic:
            raise UnsupportedComposition(f"{ctx.path}: BatchNorm has no closed-form symbolic law")
        if s.K.shape[-1] < 2:
            raise ConfigError("batch size B (number of inputs)", s.K.shape[-1],
                              ">= 2 for BatchNorm (it normalises each feature over the batch)")
        if not s.gaussian:
            raise UnsupportedComposition(
                f"{ctx.path}: BatchNorm meets features that are not jointly Gaussian (a residual "
                "stream carrying the input or a previous BatchNorm output); its exact law needs "
                "Gaussian features: put it after a Dense, or use Inputs(law='gaussian').")
        return true_moments(s, ctx.path, ctx.ns)[0]

    def theory_forward(self, s, ctx, record=None):
        S, eps = self._cov(s, ctx), ctx.p(self.eps)
        refs = tuple(r if r.X is DECOUPLED else Ref(m=r.m, X=None) for r in s.refs)
        return Moments(K=bn_forward(S, eps), m=0 * s.m, ls=0 * s.ls, gaussian=False, refs=refs,
                       bn=BNLaw(S=S, eps=eps, scale=np.ones(S.shape[:-1])))

    def theory_backward(self, s, g, ctx):
        """E[J^T G J] for a cotangent independent of u; a part gated by a relu after this op
        (g.gate) depends on u and goes through :func:`bn_relu_backward` instead."""
        top = np.max(g.ls, axis=-1, keepdims=True)
        u = np.exp(g.ls - top)
        S, eps, G = self._cov(s, ctx), ctx.p(self.eps), outer(u, u) * g.K
        if g.gate is None:
            G = bn_backward(S, G, eps)
        else:
            H, signs = outer(u, u) * g.gate.H, g.gate.signs
            gated = get_activation("relu").gram_grad_kernel(centred_cov(S, signs)) * H  # in G
            G = bn_backward(S, G - gated, eps) + bn_relu_backward(S, H, signs, eps)
        refs = tuple(r if r.X is DECOUPLED else Ref(m=r.m, X=None) for r in g.refs)
        return g.replace(K=G, ls=top + 0 * g.ls, refs=refs, gate=None)

    def mc_forward(self, x, env, record=None):
        """Batch statistics of the simulated batch. With t = max_b ls_b, u = e^(ls - t) xt:
        y = P u / s, s^2 = |P u|^2 / B + eps e^(-2t) per (seed, feature), P = I - 11^T / B."""
        xp, B = env.xp, x.x.shape[-2]
        if B < 2:
            raise ConfigError("batch size B (number of inputs)", B,
                              ">= 2 for BatchNorm (it normalises each feature over the batch)")
        top = x.ls.max(axis=-1, keepdims=True)
        u = mc.times(x.x, xp.exp(x.ls - top))
        w = u - u.mean(axis=-2, keepdims=True)
        with np.errstate(over="ignore"):
            eps = self.eps * xp.exp(-2 * top)[..., None]
        s2 = (w * w).sum(axis=-2, keepdims=True, dtype=mc.F64) / B + eps
        inv_s = (1 / xp.sqrt(s2)).astype(w.dtype)
        y = w * inv_s
        return mc.Sig(y, xp.zeros_like(x.ls)), (y, inv_s, top)

    def mc_vjp(self, res, g, env):
        """J^T g = (1/s)(P g - y (y . g) / B) over the batch, g brought to a common scale."""
        y, inv_s, top = res
        gtop = g.ls.max(axis=-1, keepdims=True)
        h = mc.times(g.x, env.xp.exp(g.ls - gtop))
        h = h - h.mean(axis=-2, keepdims=True) - y * (y * h).mean(axis=-2, keepdims=True)
        return mc.Sig(inv_s * h, env.xp.broadcast_to(gtop - top, g.ls.shape))


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, init=False)
class Serial(Op):
    """Composition, applied left to right."""

    layers: tuple[Op, ...] = field(default=())

    def __init__(self, *layers: Op):
        flat = tuple(layers[0]) if len(layers) == 1 and isinstance(layers[0], (list, tuple)) \
            else layers
        for i, op in enumerate(flat):
            if not isinstance(op, Op):
                raise ConfigError(f"Serial layer {i}", op, "an Op such as sp.Dense() or sp.Act('relu')")
        if not flat:
            raise ConfigError("Serial layers", (), "at least one op")
        object.__setattr__(self, "layers", flat)

    def children(self):
        return self.layers

    def label(self):
        return "Serial"

    def _states(self, s, ctx):
        states = [s]
        for i, op in enumerate(self.layers):
            states.append(op.theory_forward(states[-1], ctx.at(f"[{i}] {type(op).__name__}")))
        return states

    def theory_forward(self, s, ctx, record=None):
        for i, op in enumerate(self.layers):
            s = op.theory_forward(s, ctx.at(f"[{i}] {type(op).__name__}"), record)
        return s

    def theory_backward(self, s, g, ctx):
        states = self._states(s, ctx)
        for i in reversed(range(len(self.layers))):
            g = self.layers[i].theory_backward(states[i], g, ctx.at(f"[{i}] {type(self.layers[i]).__name__}"))
        return g

    def _mc_envs(self, env):
        """Each layer's env: op index offset by the ops of the layers before it."""
        offset = 1
        for op in self.layers:
            yield op, env.child(offset)
            offset += op.mc_ops()

    def mc_forward(self, x, env, record=None):
        res = []
        for op, e in self._mc_envs(env):
            x, r = op.mc_forward(x, e, record)
            res.append(r)
        return x, res

    def mc_vjp(self, res, g, env):
        for (op, e), r in reversed(list(zip(self._mc_envs(env), res))):
            g = op.mc_vjp(r, g, e)
        return g


@dataclass(frozen=True)
class Repeat(Op):
    """``block`` applied ``n`` times. At the top level of a net each copy is one layer."""

    block: Op
    n: int = 1

    def __post_init__(self):
        if not isinstance(self.block, Op):
            raise ConfigError("Repeat.block", self.block, "an Op")
        if isinstance(self.n, bool) or not isinstance(self.n, (int, np.integer)) or self.n < 1:
            raise ConfigError("Repeat.n (depth)", self.n, "an integer >= 1")
        object.__setattr__(self, "n", int(self.n))

    def children(self):
        return (self.block,)

    def label(self):
        return f"Repeat(n={self.n})"

    def theory_forward(self, s, ctx, record=None):
        return Serial(*([self.block] * self.n)).theory_forward(s, ctx, record)

    def theory_backward(self, s, g, ctx):
        return Serial(*([self.block] * self.n)).theory_backward(s, g, ctx)

    def mc_ops(self):
        return 1 + self.n * self.block.mc_ops()

    def _mc_envs(self, env):
        size = self.block.mc_ops()
        return [env.child(1 + j * size) for j in range(self.n)]

    def mc_forward(self, x, env, record=None):
        """Copy j gets its own streams; the scale moves to ls after each copy (exact)."""
        res = []
        for e in self._mc_envs(env):
            x, r = self.block.mc_forward(x, e, record)
            x = mc.canonical(x)
            res.append(r)
        return x, res

    def mc_vjp(self, res, g, env):
        for e, r in reversed(list(zip(self._mc_envs(env), res))):
            g = mc.canonical(self.block.mc_vjp(r, g, e))
        return g


@dataclass(frozen=True)
class Residual(Op):
    """x -> beta x + alpha branch(x).

    K' = beta^2 K + alpha^2 K_f + alpha beta (X + X^T), with X the cross moment of the stream and
    the branch output (m m_f^T once the branch has passed a Dense); the backward is the same
    mixing law applied to the cotangents (:func:`sigprop.moments.mix`).
    """

    branch: Op
    alpha: Any = 1.0
    beta: Any = 1.0

    def __post_init__(self):
        if not isinstance(self.branch, Op):
            raise ConfigError("Residual.branch", self.branch, "an Op")
        object.__setattr__(self, "alpha", check("Residual.alpha", self.alpha, *_FINITE))
        object.__setattr__(self, "beta", check("Residual.beta", self.beta, *_FINITE))
        if _is_zero(self.alpha) and _is_zero(self.beta):
            raise ConfigError("Residual (alpha, beta)", (self.alpha, self.beta),
                              "not both zero (the block would output 0)")

    def children(self):
        return (self.branch,)

    def _mix(self, x, f, ctx, what):
        try:
            return mix(_vec(ctx.p(self.beta)), x, _vec(ctx.p(self.alpha)), f, ctx.ns)
        except ValueError:
            raise UnsupportedComposition(
                f"{ctx.path}: the {what} cross moment between the stream and the branch is not "
                "determined at infinite width (the branch has no Dense, and contains an op whose "
                "feature-wise coupling to its input is non-linear). Start the branch with a "
                "Dense or a normalisation followed by a Dense.") from None

    def theory_forward(self, s, ctx, record=None):
        f = self.branch.theory_forward(s.push_ref(), ctx.at("branch"))
        if record is not None and "branch" not in record:
            record["branch"] = f
        return self._mix(s, f, ctx, "forward")

    def theory_backward(self, s, g, ctx):
        gf = self.branch.theory_backward(s.push_ref(), g.push_ref(), ctx.at("branch"))
        if g.gate is not None and gf.gate is not None:
            raise UnsupportedComposition(
                f"{ctx.path}: the stream and the branch both reach a BatchNorm through a relu "
                "(two gated cotangents of one batch); their joint backward is not implemented.")
        return self._mix(g, gf, ctx, "backward")

    def mc_forward(self, x, env, record=None):
        f, res = self.branch.mc_forward(x, env.child(1))
        if record is not None and "branch" not in record:
            record["branch"] = f
        return mc.mix(self.beta, x, self.alpha, f), res

    def mc_vjp(self, res, g, env):
        return mc.mix(self.beta, g, self.alpha, self.branch.mc_vjp(res, g, env.child(1)))


def _is_zero(v) -> bool:
    if isinstance(v, Sweep):
        return all(x == 0 for x in v.values)
    return isinstance(v, (int, float)) and v == 0
