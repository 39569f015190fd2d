"""Write the variable table of docs/schema.md from ``sigprop.schema.VARIABLES`` and
``sigprop.schema.FINITE_WIDTH_VARIABLES``.

``python docs/gen_schema.py`` rewrites the table between the markers; ``--check`` exits 1 when
the file differs from what it would write (tests/test_docs.py runs the same comparison).
"""

from __future__ import annotations

import html
import sys
from pathlib import Path

from sigprop import schema

SCHEMA_MD = Path(__file__).with_name("schema.md")
BEGIN = "<!-- begin table: generated from sigprop.schema.VARIABLES by docs/gen_schema.py -->"
END = "<!-- end table -->"


def _cell(text: str) -> str:
    """Text safe in a Markdown table cell: HTML-escaped, pipes as entities."""
    return html.escape(text, quote=False).replace("|", "&#124;")


def _notes(v: schema.Variable) -> str:
    notes = []
    if v.log_of:
        notes.append(f"log companion of `{v.log_of}`")
    if v.scale:
        notes.append("scale (positive, heavy-tailed at finite width)")
    if v.backward:
        notes.append("backward pass (absent from `sp.theory(..., backward=False)`)")
    if v.name in schema.FINITE_WIDTH_VARIABLES:
        notes.append("theory at a width only: `sp.theory(net, inputs, width=N)`")
    return "; ".join(notes)


def table() -> str:
    """The Markdown table of every dataset variable, in dataset order."""
    rows = ["| name | dims | long_name | units | description | notes |",
            "| --- | --- | --- | --- | --- | --- |"]
    for v in [*schema.VARIABLES.values(), *schema.FINITE_WIDTH_VARIABLES.values()]:
        rows.append(f"| `{v.name}` | ({', '.join(v.dims)}) | {_cell(v.long_name)} | "
                    f"`{v.units}` | {_cell(v.description)} | {_notes(v)} |")
    return "\n".join(rows)


def render(text: str) -> str:
    """``text`` with the block between BEGIN and END replaced by the current table."""
    head, sep, rest = text.partition(BEGIN)
    _, sep_end, tail = rest.partition(END)
    if not sep or not sep_end:
        raise SystemExit(f"{SCHEMA_MD}: the markers {BEGIN!r} ... {END!r} are missing")
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    text = SCHEMA_MD.read_text()
    new = render(text)
    if "--check" in argv:
        if new != text:
            print(f"{SCHEMA_MD} is out of date: run python docs/gen_schema.py", file=sys.stderr)
            return 1
        return 0
    SCHEMA_MD.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
