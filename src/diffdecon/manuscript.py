r"""Numbers and tables for the manuscript, written by the code.

Every number quoted in ``paper/main.tex`` comes from a ``\newcommand`` file in
``paper/variables/`` written here, and every table from ``paper/tables/``, so text and
results cannot drift apart.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from . import paths
from .cache import atomic_write_text
from .config import Profile

_NAME = re.compile(r"^[A-Za-z]+$")


def _format(value: Any, digits: int) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}".replace(",", "{,}")
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e5 else f"{value:.{digits}f}".rstrip("0").rstrip(".") if digits else f"{value:.0f}"
    return latex_escape(str(value))


def latex_escape(text: str) -> str:
    """Escape the LaTeX special characters of plain text."""
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"),
                 ("#", r"\#"), ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\~{}"), ("^", r"\^{}")):
        text = text.replace(a, b)
    return text


def write_variables(name: str, values: dict[str, Any], digits: int = 3, directory: Path | None = None) -> Path:
    r"""Write ``\newcommand{\<key>}{<value>}`` lines to ``paper/variables/<name>.tex``.

    Keys must be letters only (LaTeX macro names), e.g. ``{"FigOneRedshift": 0.2}``.

    Raises
    ------
    ValueError
        If a key is not a valid LaTeX macro name.
    """
    lines = [f"% written by diffdecon.manuscript.write_variables('{name}'); do not edit"]
    for key, value in values.items():
        if not _NAME.match(key):
            raise ValueError(f"variable name {key!r} is not a LaTeX macro name (letters only)")
        lines.append(f"\\newcommand{{\\{key}}}{{{_format(value, digits)}}}")
    path = (directory or paths.VARIABLES) / f"{name}.tex"
    return atomic_write_text(path, "\n".join(lines) + "\n")


def latex_table(
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    caption: str | None = None,
    label: str | None = None,
    digits: int = 3,
    note: str | None = None,
) -> str:
    """A booktabs ``tabular`` (wrapped in ``table`` when a caption is given)."""
    rows = [[_format(v, digits) if not isinstance(v, str) else v for v in row] for row in rows]
    body = [r"\begin{tabular}{" + "l" + "r" * (len(header) - 1) + "}", r"\toprule",
            " & ".join(header) + r" \\", r"\midrule"]
    body += [" & ".join(row) + r" \\" for row in rows]
    body += [r"\bottomrule", r"\end{tabular}"]
    if note:
        body.append(r"\\[2pt]{\footnotesize " + note + "}")
    if caption is None:
        return "\n".join(body) + "\n"
    out = [r"\begin{table}[ht]", r"\centering", r"\caption{" + caption + "}"]
    if label:
        out.append(r"\label{" + label + "}")
    return "\n".join(out + body + [r"\end{table}"]) + "\n"


def write_table(name: str, latex: str, directory: Path | None = None) -> Path:
    """Write a LaTeX table to ``paper/tables/<name>.tex`` atomically."""
    return atomic_write_text((directory or paths.TABLES) / f"{name}.tex", latex)


# --------------------------------------------------------------------------- table rows


TARGETS_TABLE_HEADER: tuple[str, ...] = (
    "target", "$z$", "$i$ [mag]", "$m(z,p)$ [px]", "upsampling", r"$\chi^2_g$", r"$\chi^2_r$", r"$\chi^2_i$",
    "variance ratio", "HST corr.", "wall [s]", r"$\chi^2_{\max}$ outside res. sources")
"""Columns of :func:`analysis_table_rows`."""


def write_targets_table(name: str, analyses: Sequence[Any], caption: str, label: str,
                        missing: Sequence[str] = (), directory: Path | None = None) -> list[list[str]]:
    """Write the table of real targets (:func:`analysis_table_rows`, columns
    :data:`TARGETS_TABLE_HEADER`) to ``paper/tables/<name>.tex``, a note naming the
    ``missing`` targets; one "no target present" row when ``analyses`` is empty.
    ``directory`` replaces ``paper/tables``. Returns the rows."""
    rows = analysis_table_rows(analyses)
    header = list(TARGETS_TABLE_HEADER)
    note = "Absent, not run: " + latex_escape(", ".join(missing)) + "." if missing else None
    write_table(name, latex_table(header, rows or [["no target present"] + [""] * (len(header) - 1)],
                                  caption=caption, label=label, note=note), directory)
    return rows


def analysis_table_rows(analyses: Sequence[Any]) -> list[list[str]]:
    """Rows of the targets' table (LaTeX-ready strings): target, z, i mag, m(z, p) [HSC px],
    upsampling factor, reduced chi^2 per band g, r, i of A(posterior mean) against y, the
    aperture variance ratio, the HST correlation (``no HST`` without a cutout) and the wall
    time [s], and the largest over the bands of the reduced chi^2 outside the residual sources
    (:func:`diffdecon.diagnostics.residual_sources`: neighbours, light outside the model field,
    structure on the galaxy; empty when not measured). ``analyses``:
    :class:`diffdecon.targets.TargetAnalysis` objects. A diverged sampler shows ``diverged`` in
    the posterior columns."""
    rows = []
    for a in analyses:
        row = [latex_escape(a.name), f"{a.z:.4f}", f"{a.i_mag:.2f}", f"{a.m:.1f}", f"{a.upsampling_factor:.2f}"]
        if a.result is None:
            row += ["diverged"] * 4
        else:
            row += [f"{c:.2f}" if abs(c) < 1e4 else f"{c:.2e}" for c in a.result.chi2]
            row += [f"{a.result.variance_ratio_aperture:.3f}"]
        if a.hst is None:
            row.append("no HST")
        else:
            row.append("diverged" if a.agreement is None else f"{a.agreement.correlation:.3f}")
        row.append(f"{a.wall_time_s:.1f}")
        res = getattr(a, "residuals", None)
        row.append("diverged" if a.result is None else ("" if res is None else f"{max(res.chi2_outside):.2f}"))
        rows.append(row)
    return rows


def fid_table_rows(profile: Profile | str, fids: dict[int, float], floor: float,
                   fid_sd: dict[int, float] | None = None,
                   change: dict[int, tuple[float, float]] | None = None) -> list[list[Any]]:
    """Rows for the FID table: training fraction, paper step, paper FID, our step, our FID,
    and, when given, its bootstrap standard deviation (``fid_sd``) and its change from the
    earliest snapshot with the paired-bootstrap standard deviation of that change
    (``change[step] = (FID(step) - FID(earliest), sd)``; see :class:`PriorEvaluation`).
    The floor row closes the table."""
    from .training import PAPER_FID, PAPER_FID_STEPS, fid_steps

    ours = fid_steps(profile)
    rows = []
    for ps, pf, s in zip(PAPER_FID_STEPS, PAPER_FID, ours):
        row = [f"{ps / 525_000:.3f}", f"{ps // 1000}k", pf, s, fids[s]]
        if fid_sd is not None:
            row.append(fid_sd[s])
        if change is not None:
            row.append("" if s == ours[0] else f"{change[s][0]:+.3f} $\\pm$ {change[s][1]:.3f}")
        rows.append(row)
    floor_row = ["floor", "", "", "", floor] + [""] * ((fid_sd is not None) + (change is not None))
    return rows + [floor_row]
