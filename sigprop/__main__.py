"""``python -m sigprop``: the ``sigprop`` command (:mod:`sigprop.pipeline.cli`)."""

from sigprop.pipeline.cli import app

app(prog_name="sigprop")
