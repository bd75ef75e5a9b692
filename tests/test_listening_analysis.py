"""`divcfg listen --analyse / --export`: scores, win rates and intervals from real answers stored by
the real server, the merge-vs-CFG verdict both ways, the CSV, and the report's "Human evaluation"
section (on a stub page and on a real `divcfg report` page)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from divcfg.cli import main as cli_main
from divcfg.listening.app import BackgroundServer, create_app
from divcfg.listening.cli import analyse_run

from test_listening_app import INJECTION, SYSTEMS, answer_body, new_study


def answer_all(client, study: dict, rater: str, quality_of: dict, prefer: str | None) -> None:
    """Answer every trial of ``rater``: quality = ``quality_of[system]``; diversity = the pair of
    system ``prefer`` when it is shown, else A."""
    while (t := client.get("/api/next", params={"rater": rater}).json()["trial"]) is not None:
        trial = study["trials"][t["id"]]
        if trial["kind"] == "quality":
            v = quality_of[trial["system"]]
            body = answer_body(study, rater, t, t["key"], value=v)
        else:
            side = next((s for s in "AB" if trial[s]["system"] == prefer), "A")
            body = answer_body(study, rater, t, t["key"], choice=side)
        assert client.post("/api/answer", json=body).status_code == 200


def test_analysis_export_and_report_section(tiny_data_dir, tmp_path, capsys):
    run, study_dir = new_study(tiny_data_dir, tmp_path)
    assert cli_main(["listen", str(run), "--analyse"]) == 0  # no answers yet: says so
    empty = json.loads((study_dir / "analysis.json").read_text())["merge_vs_cfg"]
    assert empty["verdict"] == "not tested" and "no answers yet" in empty["sentence"]
    app = create_app(study_dir)
    study = app.state.study
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url) as client:
        for k in range(6):
            answer_all(client, study, f"rater{k}", {"base": 2, "cfg_g3": 3 + k % 2, "merge_l0.5": 4}, "merge_l0.5")
    (run / "report.html").write_text('<html><body><h1>r</h1><h2 id="provenance">P</h2></body></html>')
    capsys.readouterr()
    assert cli_main(["listen", str(run), "--analyse", "--export"]) == 0
    printed = capsys.readouterr().out
    a = json.loads((study_dir / "analysis.json").read_text())
    assert a["answers"] == 54 and a["raters"] == 6 and a["bootstrap_unit"] == "rater"
    q = a["quality"]
    assert q["merge_l0.5"]["overall"]["mean"] == 4 and q["base"]["acoustic"]["mean"] == 2
    assert q["cfg_g3"]["overall"]["n"] == 12 and 3 <= q["cfg_g3"]["overall"]["mean"] <= 4
    lo, hi = q["cfg_g3"]["overall"]["ci"]
    assert 3 <= lo <= q["cfg_g3"]["overall"]["mean"] <= hi <= 4
    wins = {(d["a"], d["b"]): d["win_rate_a"] for d in a["diversity"]}
    assert wins[("cfg_g3", "merge_l0.5")]["mean"] == 0 and wins[("base", "merge_l0.5")]["mean"] == 0
    assert wins[("base", "cfg_g3")]["n"] > 0  # neither side preferred: the page's A, which alternates
    mv = a["merge_vs_cfg"]
    assert mv["verdict"] == "confirm" and mv["diversity_win_rate"]["mean"] == 1
    assert mv["quality_difference"]["ci"][0] > 0
    assert mv["sentence"].startswith("Raters confirm") and mv["sentence"] in printed
    # CSV: one row per answer, unblinded
    import csv
    with open(study_dir / "answers.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 54 and {r["system"] for r in rows if r["kind"] == "quality"} == {s[0] for s in SYSTEMS}
    assert all(r["chosen_system"] == "merge_l0.5" for r in rows if r["kind"] == "diversity"
               and "merge_l0.5" in (r["system_A"], r["system_B"]))
    assert any(r["prompt"] == INJECTION for r in rows)
    # the report's section, inserted once and replaced on a second analysis
    page = (run / "report.html").read_text()
    assert page.count('<h2 id="human">Human evaluation</h2>') == 1
    assert page.index('id="human"') < page.index('id="provenance"') and "Raters confirm" in page
    analyse_run(run, n_boot=200)
    assert (run / "report.html").read_text().count('id="human-verdict"') == 1


def test_verdict_contradicts_when_raters_prefer_cfg(tiny_data_dir, tmp_path):
    run, study_dir = new_study(tiny_data_dir, tmp_path)
    app = create_app(study_dir)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url) as client:
        for k in range(5):
            answer_all(client, app.state.study, f"r{k}", {"base": 3, "cfg_g3": 5, "merge_l0.5": 1}, "cfg_g3")
    mv = analyse_run(run, n_boot=300)["merge_vs_cfg"]
    assert mv["verdict"] == "contradict" and mv["sentence"].startswith("Raters contradict")
    assert mv["diversity_win_rate"]["mean"] == 0 and mv["quality_difference"]["mean"] == -4


def test_report_shows_the_human_evaluation_section(tiny_data_dir, tmp_path_factory, tmp_path):
    """`divcfg report` on a real evaluation run (tiny untrained models, as in test_report) after
    `divcfg listen --analyse`: the section is on the page, before the provenance."""
    import shutil

    from divcfg.report import render_report
    from test_evaluation import shared_tiny_run

    _, shared = shared_tiny_run(Path(tiny_data_dir), tmp_path_factory)
    run = tmp_path / "run"
    shutil.copytree(shared, run, ignore=shutil.ignore_patterns("listening", "report*"))
    assert cli_main(["listen", str(run), "--prepare-only", "--clip-beats", "8", "--quality-trials", "3",
                     "--diversity-trials", "3"]) == 0
    study = json.loads((run / "listening" / "study.json").read_text())
    assert study["systems"][0] == "base" and len(study["systems"]) == 3
    app = create_app(run / "listening")
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url) as client:
        for k in range(2):
            answer_all(client, study, f"r{k}", dict.fromkeys(study["systems"], 3), study["systems"][-1])
    assert cli_main(["listen", str(run), "--analyse"]) == 0
    page = render_report(run, n_prompts=1, n_generations=1, audio=False).read_text()
    assert page.count('<h2 id="human">Human evaluation</h2>') == 1
    assert page.index('id="human-verdict"') < page.index('id="provenance"')
    assert "12 answers from 2 raters" in page


def test_export_defuses_spreadsheet_formulas():
    from divcfg.listening.analysis import spreadsheet_safe
    for cell in ("=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1"):
        assert spreadsheet_safe(cell) == "'" + cell
    for cell in ("a minor waltz", "", 3, -2.5, None):
        assert spreadsheet_safe(cell) == cell
