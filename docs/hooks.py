"""mkdocs hook: the docstrings' Sphinx roles (:func:`name`, :mod:`~pkg.name`) as code.

The docstrings are written for the source reader and Sphinx-style tools; mkdocstrings renders
them as plain Markdown (``docstring_style: null``), where a role is left as ``:func:`` before
its code. This drops the role and, for ``~``, keeps the last component, as Sphinx shows it.
"""

import re

ROLE = re.compile(r":(?:func|mod|class|data|meth|attr|exc|obj):<code>(~?)([^<]*)</code>")


def on_page_content(html, **kwargs):
    return ROLE.sub(lambda m: f"<code>{m[2].rsplit('.', 1)[-1] if m[1] else m[2]}</code>", html)
