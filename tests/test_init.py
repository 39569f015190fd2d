"""The lazy public names of ``sigprop``: the literal table that ``__getattr__`` follows and the
``TYPE_CHECKING`` imports that type checkers read list the same names from the same modules."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import sigprop as sp


def _type_checking_imports() -> dict[str, str]:
    """name -> module of every ``from <module> import <name>`` under ``if TYPE_CHECKING:``."""
    tree = ast.parse(Path(sp.__file__).read_text(encoding="utf-8"))
    blocks = [n for n in tree.body if isinstance(n, ast.If)
              and getattr(n.test, "id", None) == "TYPE_CHECKING"]
    assert len(blocks) == 1, "sigprop/__init__.py has one `if TYPE_CHECKING:` block"
    return {alias.asname or alias.name: node.module
            for node in blocks[0].body for alias in node.names}


def test_lazy_table_matches_the_type_checking_imports():
    assert sp._WHERE == _type_checking_imports()
    assert sp.__all__ == sorted(sp._WHERE)


def test_every_public_name_is_the_object_its_module_defines():
    import importlib

    for name, module in sp._WHERE.items():
        expected = (importlib.import_module(f"sigprop.{name}") if module == "sigprop"
                    else getattr(importlib.import_module(module), name))
        assert getattr(sp, name) is expected, name
    assert sp.ops.__name__ == "sigprop.ops"  # a subpackage not in the table still resolves


def test_unknown_name_is_a_clear_attribute_error():
    with pytest.raises(AttributeError, match="module 'sigprop' has no attribute 'no_such_name'"):
        sp.no_such_name  # noqa: B018


def test_import_loads_neither_typing_nor_ast():
    """``import sigprop`` reads no source and imports no typing: its cost is this one file."""
    code = "import sys, sigprop; print(sorted(m for m in ('ast', 'typing') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
