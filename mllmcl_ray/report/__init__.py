"""Reports: plotly figures of the papers (figures.py) in one offline HTML file (html.py).

``build_report(results_dir, out_html)`` is the entry point; ``report_main(argv)`` is the
``mllmcl report RESULTS_DIR -o report.html [--title T]`` command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mllmcl_ray.report.html import NoResultsError, build_report

__all__ = ["build_report", "report_main", "NoResultsError"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mllmcl report",
        description="Write one self-contained HTML report (plotly figures of the papers) from a results directory.",
    )
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="result store directory (Parquet part files)")
    p.add_argument("-o", "--output", default="report.html", help="HTML file to write (default: report.html)")
    p.add_argument("--title", default=None, help="report title")
    return p


def report_main(argv: Sequence[str] | None = None) -> int:
    """CLI: build the report and print its path. Returns 0, or 2 when there are no results."""
    args = _parser().parse_args(list(argv) if argv is not None else None)
    try:
        out = build_report(args.results_dir, args.output, title=args.title)
    except NoResultsError as e:
        print(f"mllmcl report: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0
