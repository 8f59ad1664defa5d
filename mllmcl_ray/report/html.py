"""One self-contained, offline HTML report of a result store.

``build_report(results_dir, out_html)`` reads the Parquet rows (``results.ResultStore``),
builds every figure of :data:`mllmcl_ray.report.figures.FIGURES` that has data, and
writes a single HTML file:

* plotly.js inlined exactly once (the first figure's ``to_html(include_plotlyjs=True)``;
  the others ``False``), no MathJax, no CDN: it opens without a network;
* a header with row / run / config counts, then one section per figure with a caption
  citing the paper figure or table, a plain HTML summary table, and a note naming the
  figures left out for lack of data;
* each figure's JSON in ``<script type="application/json" id="fig-<name>">`` (its plot
  div is ``id="plot-<name>"``), so tests and users can read the plotted numbers;
* a tiny script (before plotly.js) that records ``window.onerror`` and unhandled
  promise rejections into ``<pre id="js-errors">``, which a DOM dump shows.

The file is written atomically (temp file in the same directory, then ``os.replace``).
"""

from __future__ import annotations

import datetime as _dt
import html as _html
import os
import tempfile
from pathlib import Path

import pandas as pd

from mllmcl_ray.report import figures as F

__all__ = ["build_report", "load_results", "render_report", "NoResultsError"]

_HOW_TO_GET_RESULTS = (
    "run a study first (e.g. `mllmcl micro` or `mllmcl run CONFIG.yaml`), which writes Parquet "
    "result rows there, or pass the directory a study wrote to"
)


class NoResultsError(FileNotFoundError):
    """The results directory is missing or holds no result rows."""


def load_results(results_dir: str | os.PathLike) -> pd.DataFrame:
    """All result rows of ``results_dir`` (a ResultStore directory).

    Raises :class:`NoResultsError` (a ``FileNotFoundError``) naming the directory and
    what to run when it does not exist or holds no rows.
    """
    from mllmcl_ray.results import ResultStore

    root = Path(results_dir)
    if not root.is_dir():
        raise NoResultsError(f"results directory {str(root)!r} does not exist: {_HOW_TO_GET_RESULTS}")
    df = ResultStore(root).read()
    if df is None or len(df) == 0:
        raise NoResultsError(
            f"no result rows in {str(root)!r} (no part-*.parquet files): {_HOW_TO_GET_RESULTS}"
        )
    return df


_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0 auto;
       max-width: 1200px; padding: 1em 2em; color: #222; }
h1 { margin-bottom: .2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
.meta { color: #555; } .caption { color: #444; font-size: .95em; max-width: 60em; }
table.summary { border-collapse: collapse; font-size: .85em; }
table.summary th, table.summary td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; white-space: nowrap; }
table.summary th { background: #eef1f7; }
table.summary td:nth-child(-n+5), table.summary th:nth-child(-n+5) { text-align: left; }
.skipped { background: #fff8e5; border-left: 4px solid #e6b800; padding: .5em 1em; }
#js-errors { color: #b00; white-space: pre-wrap; }
#js-errors:empty { display: none; }
"""

_ERROR_SCRIPT = """<script>
(function () {
  function rec(msg) {
    var el = document.getElementById('js-errors');
    var line = String(msg) + '\\n';
    if (el) { el.textContent += line; } else { (window.__jsErrors = window.__jsErrors || []).push(line); }
  }
  window.onerror = function (msg, src, line, col) { rec(msg + ' (' + src + ':' + line + ':' + col + ')'); };
  window.addEventListener('unhandledrejection', function (e) { rec('unhandled rejection: ' + (e.reason && e.reason.message || e.reason)); });
  document.addEventListener('DOMContentLoaded', function () {
    var el = document.getElementById('js-errors');
    if (el && window.__jsErrors) { el.textContent += window.__jsErrors.join(''); }
  });
})();
</script>"""


def _json_script(name: str, fig) -> str:
    # "</" inside a <script> would end it; "<\/" is the same string in JSON
    payload = fig.to_json().replace("</", "<\\/")
    return f'<script type="application/json" id="fig-{_html.escape(name)}">{payload}</script>'


def _counts(df: pd.DataFrame) -> dict:
    runs = F.run_table(df)
    return {
        "rows": int(len(df)),
        "runs": int(df["run_id"].nunique()),
        "configs": int(runs["config"].nunique()),
        "studies": sorted(map(str, df["study"].dropna().unique())) if "study" in df else [],
        "models": sorted(map(str, df["model"].dropna().unique())) if "model" in df else [],
        "methods": sorted(map(str, df["method"].dropna().unique())) if "method" in df else [],
    }


def render_report(df: pd.DataFrame, *, title: str | None = None, source: str = "") -> tuple[str, list[str], list[str]]:
    """The report's HTML text from result rows; also the names of the figures drawn and
    of those skipped for lack of data."""
    title = title or "mllmcl-ray report"
    c = _counts(df)
    drawn: list[str] = []
    skipped: list[F.FigureSpec] = []
    sections: list[str] = []
    for spec in F.FIGURES:
        fig = spec.func(df)
        if fig is None:
            skipped.append(spec)
            continue
        div = fig.to_html(full_html=False, include_plotlyjs=not drawn, include_mathjax=False,
                          div_id=f"plot-{spec.name}", config={"displaylogo": False, "responsive": True})
        sections.append(
            f'<section id="section-{spec.name}">\n<h2>{_html.escape(spec.title)}</h2>\n'
            f'<p class="caption">{_html.escape(spec.caption)}</p>\n{div}\n{_json_script(spec.name, fig)}\n</section>'
        )
        drawn.append(spec.name)

    summary = F.summary_frame(df)
    summary_html = (summary.to_html(index=False, classes="summary", border=0, na_rep="—", escape=True)
                    if not summary.empty else "<p>(no runs)</p>")
    if skipped:
        items = "".join(f"<li><b>{_html.escape(s.title)}</b> ({_html.escape(s.name)}): needs "
                        f"{_html.escape(s.needs)}</li>" for s in skipped)
        skipped_html = f'<div class="skipped" id="skipped"><p>Figures skipped for lack of data:</p><ul>{items}</ul></div>'
    else:
        skipped_html = '<div id="skipped"><p>All figures drawn.</p></div>'

    def lst(xs):
        return _html.escape(", ".join(xs)) if xs else "—"

    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    header = (
        f'<h1>{_html.escape(title)}</h1>\n<p class="meta" id="counts">'
        f'<b>{c["runs"]}</b> runs ({c["configs"]} configs; seeds averaged as mean ± std), '
        f'<b>{c["rows"]}</b> result rows. Studies: {lst(c["studies"])}. Models: {lst(c["models"])}. '
        f'Methods: {lst(c["methods"])}.<br>Source: <code>{_html.escape(source)}</code>; generated {now}. '
        "Accuracies in %, Δ and BWT in percentage points.</p>"
    )
    body = "\n".join([
        header,
        '<pre id="js-errors"></pre>',
        skipped_html,
        "\n".join(sections),
        '<section id="section-summary"><h2>Summary per config</h2>'
        '<p class="caption">Final NL / NLU / NLG Δ (Srivastava Eq. 1, App. C.3), final VL accuracy '
        "(harmonic mean), and CoIN MAA / BWT (1/(T−1)) / MFT / MFN over the VL tasks; mean ± std over seeds.</p>"
        f"{summary_html}</section>",
        _claims_section(df),
    ])
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{_html.escape(title)}</title>\n<style>{_CSS}</style>\n{_ERROR_SCRIPT}\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )
    return page, drawn, [s.name for s in skipped]


def _claims_section(df) -> str:
    """The report's last section: the paper claims table (report/claims.py)."""
    from .claims import claims_table

    t = claims_table(df)
    return ('<section id="section-claims"><h2>Paper claims</h2>'
            '<p class="caption">Each claim of the papers this project reproduces, the paper\'s '
            "numbers and this run's (mean ± std over seeds, per seed); holds when the mean and "
            "every seed are above the threshold, with at least 2 seeds.</p>"
            + t.to_html(index=False, classes="summary claims", border=0, escape=True)
            + "</section>")


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def build_report(results_dir: str | os.PathLike, out_html: str | os.PathLike, title: str | None = None) -> Path:
    """Read ``results_dir``'s result rows and write the HTML report to ``out_html``.

    Returns the output path. Raises ``FileNotFoundError`` (:class:`NoResultsError`)
    naming the directory when it has no results.
    """
    df = load_results(results_dir)
    page, _, _ = render_report(df, title=title, source=str(Path(results_dir).resolve()))
    out = Path(out_html)
    _atomic_write_text(out, page)
    return out
