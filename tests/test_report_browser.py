"""The report in a real browser: it loads from a file with no console errors and no network
requests, and a screenshot of it is kept for people to look at.

Headless Chromium (Debian package ``chromium``) loads the page through a local proxy that
records every request the browser makes, and logs the page's console to stderr. Chromium
itself talks to a few of its own service hosts (component updates, sign-in) whatever the
page does; those exact hosts are ignored. A control page with a console error and two remote
images proves the checks catch what they are meant to catch.

Set ``AUTOSPLIT_SCREENSHOT_DIR`` to keep the screenshot (CI uploads it as an artefact).
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from autosplit.report import write_report

try:  # tests/ on sys.path (pytest's default rootdir-relative import)
    from test_report import MEASURED, baselines_for, example_plan
except ImportError:  # pragma: no cover - tests/ imported as a package
    from tests.test_report import MEASURED, baselines_for, example_plan

CHROMIUM = "/usr/bin/chromium"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` to run the "
           "browser checks of the HTML report")

#: Hosts Chromium contacts on its own (updates, time, sign-in), never because of the page.
BROWSER_SERVICE_HOSTS = frozenset({
    "update.googleapis.com", "accounts.google.com", "clients1.google.com",
    "clients2.google.com", "safebrowsing.googleapis.com", "redirector.gvt1.com",
    "optimizationguide-pa.googleapis.com", "content-autofill.googleapis.com",
    "edgedl.me.gvt1.com", "www.google.com",
})

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-extensions", "--disable-default-apps", "--no-default-browser-check",
         "--hide-scrollbars", "--enable-logging=stderr", "--v=0")

_CONSOLE = re.compile(r":(?:INFO|WARNING|ERROR):CONSOLE[:(]\d+\)?\]\s*(.*)")


class _RecordingProxy(http.server.ThreadingHTTPServer):
    """A proxy that answers nothing and writes down everything asked of it."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Recorder)
        self.seen: list[str] = []


class _Recorder(http.server.BaseHTTPRequestHandler):
    server: _RecordingProxy

    def _record(self) -> None:
        self.server.seen.append(f"{self.command} {self.path}")
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_HEAD = do_PUT = do_CONNECT = do_OPTIONS = _record

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        return


@pytest.fixture()
def proxy() -> Iterator[_RecordingProxy]:
    server = _RecordingProxy()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@dataclass(frozen=True)
class Load:
    dom: str
    console: list[str]
    requests: list[str]


def _host(request: str) -> str:
    method, _, target = request.partition(" ")
    if method == "CONNECT":
        return target.rsplit(":", 1)[0]
    return re.sub(r"^[a-z]+://", "", target).split("/", 1)[0].split(":", 1)[0]


def _chromium(page: Path, proxy: _RecordingProxy, tmp: Path,
              *extra: str) -> subprocess.CompletedProcess[str]:
    port = proxy.server_address[1]
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp}", f"--proxy-server=http://127.0.0.1:{port}",
         "--proxy-bypass-list=<-loopback>", *extra, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)


def load(page: Path, proxy: _RecordingProxy, tmp: Path) -> Load:
    """Open ``page`` headless; return its DOM, console messages and the page's requests."""
    done = _chromium(page, proxy, tmp / "profile-dom", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    console = [m.group(1) for m in map(_CONSOLE.search, done.stderr.splitlines()) if m]
    requests = [r for r in proxy.seen if _host(r) not in BROWSER_SERVICE_HOSTS]
    return Load(done.stdout, console, requests)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_checks_catch_console_errors_and_requests(tmp_path: Path,
                                                  proxy: _RecordingProxy
                                                  ) -> None:
    """The control: a page that misbehaves must be caught by the same checks."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><p>control</p>'
                    '<script>console.error("control-error")</script>'
                    '<img src="http://example.invalid/a.png">'
                    '<img src="https://example.invalid/b.png"></body></html>')
    result = load(page, proxy, tmp_path)
    assert any("control-error" in c for c in result.console), result.console
    hosts = {_host(r) for r in result.requests}
    assert "example.invalid" in hosts, result.requests


def test_report_loads_offline_without_errors(tmp_path: Path,
                                             proxy: _RecordingProxy) -> None:
    plan = example_plan()
    page = tmp_path / "report.html"
    write_report(plan, page, baselines=baselines_for(plan), measured=MEASURED)
    result = load(page, proxy, tmp_path)
    assert result.console == [], result.console
    assert result.requests == [], result.requests
    # The browser built the whole page: every section and chart is in the DOM.
    for section in ("map", "timeline", "memory", "time", "compare", "measured", "search"):
        assert f'id="{section}"' in result.dom, section
    assert result.dom.count("<svg") == 4
    assert "Pipeline timeline" in result.dom

    shot = tmp_path / "report.png"
    done = _chromium(page, proxy, tmp_path / "profile-shot", "--window-size=1366,3600",
                     f"--screenshot={shot}")
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    assert png_size(shot) == (1366, 3600)
    assert shot.stat().st_size > 50_000  # a blank page compresses to a few kB
    keep = os.environ.get("AUTOSPLIT_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "report.png")


def test_png_export_through_chromium(tmp_path: Path) -> None:
    from autosplit.report.static import write_static_charts

    result = write_static_charts(example_plan(), tmp_path / "charts", png=True)
    assert result.png_note == ""
    assert sorted(p.name for p in result.png) == [
        "cluster_map.png", "memory.png", "stage_times.png", "timeline.png"]
    for png in result.png:
        width, height = png_size(png)
        assert width >= 1100 and height > 100, (png.name, width, height)
        assert png.stat().st_size > 5_000
