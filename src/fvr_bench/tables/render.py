"""The one renderer of the leaderboard and the paper tables: Markdown and booktabs LaTeX
rows, the ↑/↓ arrows and the one LaTeX escape.

:func:`latex_escape` escapes LaTeX's special characters (``\\ & % $ # _ { } ~ ^``) one
character at a time (an escape is never escaped again) and writes the few non-ASCII signs
the table specs use in math mode (``σ``, ``×``, ``²``, ``×10³``) or as ``--`` (``–``), so
the ``.tex`` files compile with a plain pdflatex preamble (booktabs only).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

LATEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "σ": r"$\sigma$", "×10³": r"$\times10^3$", "×10²": r"$\times10^2$", "×": r"$\times$", "²": r"$^2$", "–": "--",
}
_LATEX_TOKEN = re.compile("×10³|×10²|.", re.DOTALL)  # the longer signs first

UP, DOWN = "↑", "↓"
LATEX_UP, LATEX_DOWN = r"$\uparrow$", r"$\downarrow$"


def latex_escape(text: Any) -> str:
    """``str(text)`` with every LaTeX special character and known sign escaped (once)."""
    return _LATEX_TOKEN.sub(lambda match: LATEX_ESCAPES.get(match.group(), match.group()), str(text))


def arrow(higher_is_better: bool, latex: bool = False) -> str:
    """↑ for higher-is-better, ↓ otherwise (``$\\uparrow$`` / ``$\\downarrow$`` in LaTeX)."""
    if latex:
        return LATEX_UP if higher_is_better else LATEX_DOWN
    return UP if higher_is_better else DOWN


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table: header, ``|---|`` rule, one line per row of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return lines


def latex_row(cells: Sequence[str]) -> str:
    return " & ".join(cells) + r" \\"


def latex_tabular(columns: str, header: Sequence[str], rows: Iterable[Sequence[str] | str]) -> list[str]:
    """The lines of a booktabs ``tabular`` with column spec ``columns``: a row is a list of
    cells (already escaped) or a line given as is (``\\midrule`` between groups)."""
    lines = [f"\\begin{{tabular}}{{{columns}}}", r"\toprule", latex_row(header), r"\midrule"]
    lines += [row if isinstance(row, str) else latex_row(row) for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return lines
