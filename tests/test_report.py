"""`divcfg report`: the page renders from a tiny evaluation run with the plot, the table, the
training curves and the players, every link resolves, and headless Chromium loads it with no
console errors and no failed requests."""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from divcfg.cli import main as cli_main
from divcfg.errors import UserError
from divcfg.report import render_report

from test_evaluation import data_dir, shared_tiny_run  # noqa: F401  (data_dir is a fixture)

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def report(data_dir, tmp_path_factory):  # noqa: F811
    results, run = shared_tiny_run(data_dir, tmp_path_factory)
    page = render_report(run, n_prompts=2, n_generations=2)
    return results, run, page


def _local_links(page_text: str) -> list[str]:
    return [u for u in re.findall(r'(?:src|href)="([^"]+)"', page_text)
            if not u.startswith(("data:", "http:", "https:", "#"))]


def test_report_has_plot_table_curves_and_players(report):
    results, run, page = report
    text = page.read_text()
    assert page == run / "report.html"
    assert 'id="qd-plot" src="data:image/png;base64,' in text
    assert (run / "report_assets" / "quality_diversity.png").stat().st_size > 5000
    assert (run / "report_assets" / "quality_diversity.svg").read_text().lstrip().startswith("<?xml")
    assert 'id="results-table"' in text and 'id="fronts-table"' in text
    for r in results["systems"]:
        assert f"<td class=\"name\">{r['label']}" in text
    assert 'id="training-plot"' in text  # the students' metrics.jsonl were recorded by evaluate
    assert 'id="headline"' in text and "hypervolume" in text.lower()
    links = _local_links(text)
    assert links and all((run / u).is_file() for u in links)
    assert any(u.endswith(".mid") for u in links) and any(u.endswith(".png") for u in links)
    from divcfg.music.render import find_soundfont
    n_audio = text.count("<audio ")
    if find_soundfont() is not None:
        assert n_audio > 0 and all((run / u).stat().st_size > 1000 for u in links if u.endswith(".wav"))
    else:
        assert n_audio == 0 and "No audio" in text
    # two prompts' listening sections, one row per system
    assert text.count("<table class=\"listen\">") == 2


def test_report_without_audio_and_cli(report, tmp_path):
    _, run, _ = report
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert cli_main(["report", str(copy), "--no-audio", "--prompts", "1", "--systems", "base,cfg_g2"]) == 0
    text = (copy / "report.html").read_text()
    assert "<audio " not in text and text.count("<table class=\"listen\">") == 1
    assert not list((copy / "report_assets").glob("*.wav"))  # stale players from the first render removed
    with pytest.raises(UserError, match="no results.json"):
        render_report(tmp_path / "nothing")
    assert cli_main(["report", str(copy), "--systems", "nope"]) == 2


def test_the_domain_in_results_picks_the_section(report, tmp_path):
    """The page's domain part follows results.json's "domain": a domain without a report section still
    gets the plot and the tables, and no music; a run without the field (written before
    it existed) is a music run."""
    import json
    _, run, _ = report
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    results = json.loads((copy / "results.json").read_text())
    assert results["domain"] == "music"
    for domain, music in (("chess", False), (None, True)):
        if domain is None:
            del results["domain"]
        else:
            results["domain"] = domain
        (copy / "results.json").write_text(json.dumps(results))
        text = render_report(copy, n_prompts=1, n_generations=1, audio=False).read_text()
        assert 'id="qd-plot"' in text and 'id="results-table"' in text and 'id="fronts-table"' in text
        assert ("pitch-class dist." in text) == music and ('id="listen"' in text) == music
        assert ("no sample section for the chess domain" in text) == (not music)
        assert ("text–music alignment" in text) == music


# ---------------------------------------------------------------------------------------------
# headless Chromium


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_request(self, code="-", size="-"):
        self.server.requests.append((self.path, int(code) if str(code).isdigit() else code))

    def log_message(self, *args):
        pass


def _open_in_chromium(folder: Path, page: str, tmp_path: Path) -> tuple[str, list[str], list]:
    """Serve ``folder`` on localhost, load ``page`` in headless Chromium; returns (DOM, console
    messages, [(path, status)] of every request the browser made)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(folder)))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{page}"
        proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                               "--no-first-run", "--disable-background-networking", "--disable-component-update",
                               "--disable-sync", f"--user-data-dir={tmp_path / 'chrome'}", "--enable-logging=stderr",
                               "--v=0", "--virtual-time-budget=5000", "--dump-dom", url],
                              capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console, list(server.requests)


def chromium(test):
    """Browser tests need the Chromium that `make` installs: without it they fail, they do not skip."""
    @functools.wraps(test)
    def needs_chromium(*args, **kwargs):
        assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `make` (it installs Debian's chromium)"
        return test(*args, **kwargs)
    return needs_chromium


@chromium
def test_console_check_catches_errors(tmp_path):
    """The browser check is able to fail: a broken page shows up in it."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body><p>hi</p>'
        '<img src="missing.png"><script>console.error("boom")</script></body></html>')
    dom, console, requests = _open_in_chromium(tmp_path / "site", "index.html", tmp_path)
    assert "<p>hi</p>" in dom
    assert any("boom" in line for line in console)
    assert ("/missing.png", 404) in requests


@chromium
def test_report_opens_in_chromium(report, tmp_path):
    results, run, _ = report
    dom, console, requests = _open_in_chromium(run, "report.html", tmp_path)
    assert 'id="results-table"' in dom and 'id="qd-plot"' in dom
    assert results["systems"][0]["label"] in dom
    assert console == [], console
    assert ("/report.html", 200) in requests
    failed = [(p, c) for p, c in requests if c != 200]
    assert not failed, failed
    assert any(p.endswith(".png") for p, _ in requests)  # the piano rolls were fetched
