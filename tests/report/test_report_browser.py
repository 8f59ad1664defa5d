"""The report in a real browser: headless Chromium, no network.

Builds a report from synthetic rows (tests/report/test_report.py), opens it with
``chromium --headless --dump-dom --screenshot`` (network disabled: every host resolves
to nothing), and checks from the dumped DOM that

* the page's error recorder (``<pre id="js-errors">``, fed by ``window.onerror`` and
  unhandled promise rejections) stayed empty, and
* every figure's plot div holds a rendered ``<svg class="main-svg">``;

plus a negative control showing the recorder does catch an error, and a screenshot that
is a non-blank PNG. Needs the Debian package ``chromium`` (CI installs it); skipped with
the reason otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mllmcl_ray.report import build_report
from mllmcl_ray.report.html import _ERROR_SCRIPT

from test_report import make_rows, read_figs, write_store

pytestmark = pytest.mark.slow


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


CHROMIUM = _chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not installed (Debian: apt-get install -y chromium; CI installs it)",
)


def run_chromium(page: Path, tmp: Path, *, screenshot: Path | None = None, timeout: float = 90) -> str:
    """Load ``page`` in headless Chromium with the network off; return the dumped DOM."""
    args = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-extensions",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # any network request would fail
        f"--user-data-dir={tmp / 'chromium-profile'}", "--virtual-time-budget=10000",
        "--hide-scrollbars", "--window-size=1280,3000",
    ]
    if screenshot is not None:
        args.append(f"--screenshot={screenshot}")
    args += ["--dump-dom", page.resolve().as_uri()]
    env = {**os.environ, "HOME": str(tmp)}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    assert "</html>" in proc.stdout, f"no DOM dumped; stderr: {proc.stderr[-2000:]}"
    return proc.stdout


class _PlotSvgCounter(HTMLParser):
    """Counts ``<svg class="main-svg">`` inside each ``<div id="plot-...">``."""

    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = {}
        self._stack: list[str | None] = []  # open divs: plot name or None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div":
            pid = a.get("id") or ""
            self._stack.append(pid[len("plot-"):] if pid.startswith("plot-") else None)
            if pid.startswith("plot-"):
                self.counts.setdefault(pid[len("plot-"):], 0)
        elif tag == "svg" and "main-svg" in (a.get("class") or "").split():
            for name in reversed(self._stack):
                if name is not None:
                    self.counts[name] += 1
                    break

    def handle_endtag(self, tag):
        if tag == "div" and self._stack:
            self._stack.pop()


def js_errors(dom: str) -> str:
    m = re.search(r'<pre id="js-errors">(.*?)</pre>', dom, re.S)
    assert m, "error recorder <pre id='js-errors'> missing from the DOM"
    return m.group(1).strip()


@needs_chromium
def test_error_recorder_catches_errors(tmp_path):
    """Negative control: the recorder the report uses does show a thrown error."""
    page = tmp_path / "broken.html"
    page.write_text(
        f"<!DOCTYPE html><html><head>{_ERROR_SCRIPT}</head><body><pre id=\"js-errors\"></pre>"
        "<script>noSuchFunction();</script></body></html>",
        encoding="utf-8",
    )
    assert "noSuchFunction" in js_errors(run_chromium(page, tmp_path))


@needs_chromium
def test_report_renders_in_headless_chromium(tmp_path):
    write_store(tmp_path / "results", make_rows())
    out = build_report(tmp_path / "results", tmp_path / "report.html")
    names = set(read_figs(out.read_text(encoding="utf-8")))
    assert len(names) == 7

    shot = tmp_path / "report.png"
    t0 = time.monotonic()
    dom = run_chromium(out, tmp_path, screenshot=shot)
    elapsed = time.monotonic() - t0

    assert js_errors(dom) == "", f"JavaScript errors in the report: {js_errors(dom)}"
    counter = _PlotSvgCounter()
    counter.feed(dom)
    assert set(counter.counts) == names
    missing = {n: c for n, c in counter.counts.items() if c < 1}
    assert not missing, f"figures without a rendered <svg class='main-svg'>: {missing}"

    # the screenshot is a real, non-blank PNG
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, 3000)
        colors = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colors is None or len(colors) > 50, "screenshot looks blank"
    print(f"chromium load + render + screenshot: {elapsed:.1f} s")
