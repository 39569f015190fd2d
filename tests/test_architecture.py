"""The house's rules, checked: imports only point down, and every registered op has its faces.

The layers, lowest first (docs/architecture.md): a module may import a module of a lower layer,
or of its own package; never one of a higher layer, nor of another package of its own layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import sigprop as sp
from sigprop import symbolic as S
from sigprop.errors import UnsupportedComposition
from sigprop.ops import Op, op_from_dict
from sigprop.state.moments import Cotangent
from sigprop.state.ns import NUMERIC
from sigprop.state.params import Context
from sigprop.testing import example

PACKAGE = Path(sp.__file__).resolve().parent

LAYERS = [
    {"errors", "version"},
    {"schema", "provenance"},
    {"state", "data"},
    {"kernels"},
    {"ops"},
    {"presets"},
    {"engines", "analysis"},
    {"testing", "interop"},
    {"symbolic"},
    {"figures"},
    {"pipeline"},
    {"__init__", "__main__"},
]
RANK = {group: rank for rank, groups in enumerate(LAYERS) for group in groups}


def _group(module: str) -> str:
    """'sigprop.state.moments' -> 'state'; 'sigprop' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sigprop_imports(path: Path):
    """Every sigprop module imported anywhere in the file (lazy imports inside functions too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "sigprop":  # from sigprop import x: x is a module or a name
                for alias in node.names:
                    yield f"sigprop.{alias.name}", node.lineno
            elif node.module.startswith("sigprop."):
                yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("sigprop."):
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            yield f"<relative import level {node.level}>", node.lineno


def test_every_module_belongs_to_a_layer():
    groups = {_group(_module_of(p)) for p in PACKAGE.rglob("*.py")}
    assert groups <= set(RANK), f"modules outside the layering: {groups - set(RANK)}"


def _upward_imports(modules) -> list[str]:
    """Each import of ``modules`` ((name, path) pairs) that breaks the layering, as a line."""
    bad = []
    for me, path in modules:
        mine = _group(me)
        for target, line in _sigprop_imports(path):
            if target.startswith("<"):
                bad.append(f"{me}:{line} uses a {target[1:-1]} (write absolute imports)")
                continue
            theirs = _group(target)
            if theirs not in RANK:
                bad.append(f"{me}:{line} imports {target}, which is in no layer")
            elif theirs != mine and RANK[theirs] >= RANK[mine]:
                bad.append(f"{me}:{line} ({mine}) imports {target} ({theirs}): an arrow up")
    return bad


def test_imports_only_point_down():
    bad = _upward_imports((_module_of(p), p) for p in sorted(PACKAGE.rglob("*.py")))
    assert not bad, "\n".join(bad)


def test_the_check_sees_an_upward_import(tmp_path):
    """The walker is not blind: a planted lazy upward import and a relative one are reported."""
    planted = tmp_path / "planted.py"
    planted.write_text("from . import x\n\ndef f():\n    from sigprop.pipeline import cli\n")
    bad = _upward_imports([("sigprop.state.planted", planted)])
    assert len(bad) == 2 and "arrow up" in bad[1] and "relative import" in bad[0]


# -- every op in the registry, without a hand-kept list ----------------------------------------
OPS = sorted(Op.REGISTRY)


@pytest.mark.parametrize("name", OPS)
def test_registered_op_round_trips_and_prints(name):
    op = example(Op.REGISTRY[name])
    assert op_from_dict(op.to_dict()) == op
    assert hash(op) == hash(op_from_dict(op.to_dict()))
    assert str(op).splitlines()[0].startswith(name if name not in ("Serial", "Repeat") else name[:3])
    assert type(op).__doc__ and type(op).__doc__.strip()


@pytest.mark.parametrize("name", OPS)
def test_registered_op_has_every_face(name):
    """Theory forward and backward, Monte Carlo forward and VJP, and the symbolic face (or a
    named refusal), on a Dense -> op block over two Gaussian inputs."""
    net = sp.Serial(sp.Dense(), example(Op.REGISTRY[name]))
    x0 = sp.Inputs(q=[1.0, 1.5], corr=0.3, mean=0.0)
    th = sp.theory(net, x0)
    mc = sp.simulate(net, x0, width=64, seeds=2, backend="numpy")
    for v in ("log_q", "corr", "log_grad_q"):
        assert np.isfinite(th[v].values).all(), (name, v)
        assert np.isfinite(mc[v].values).all(), (name, v)
    assert th.sizes["layer"] == mc.sizes["layer"]
    n_out, widest, _ = net.mc_widths(64)
    assert n_out == 64 and widest >= 64
    if Op.REGISTRY[name].symbolic_law:
        assert "q_a" in S.block_map(net, 1, simplify=False)
    else:
        with pytest.raises(UnsupportedComposition, match="no closed-form symbolic law"):
            S.block_map(net, 1, simplify=False)


@pytest.mark.parametrize("name", OPS)
def test_an_op_couples_the_inputs_exactly_when_it_says_so(name):
    """``Op.couples_inputs``: where no op of a net couples its inputs, the compiled engine
    takes the backward as a gain per input, summed along the forward (``compiled._diagonal``).
    An op that says it does not pulls a diagonal cotangent back to a diagonal one whose entry
    for input 0 does not move with input 1's (G = diag(1, 2), then diag(1, 7), at a Dense's
    output over two Gaussian inputs); BatchNorm, which says it does, mixes them."""
    op, ctx = example(Op.REGISTRY[name]), Context(NUMERIC, ())
    s = sp.Dense().theory_forward(
        sp.Inputs(q=[1.0, 1.5], corr=0.3, law="gaussian").moments(), ctx)
    got = []
    for d in (2.0, 7.0):
        g = op.theory_backward(s, Cotangent(K=np.diag([1.0, d]), m=np.zeros(2),
                                            ls=np.zeros(2)), ctx)
        got.append(g.K * np.outer(np.exp(g.ls), np.exp(g.ls)))
    scale = max(abs(got[0][0, 0]), 1e-300)
    apart = all(abs(G[0, 1]) <= 1e-13 * scale for G in got) and \
        abs(got[1][0, 0] - got[0][0, 0]) <= 1e-13 * scale
    assert apart != type(op).couples_inputs, (name, got)
