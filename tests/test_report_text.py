"""`divcfg report` for the text domain, on the real pipeline: the tiny GPT-2 of test_hf_cli (built in
code) with three HTML-ish words added to its vocabulary, prompts that hold markup, two students
fine-tuned a few steps, `divcfg evaluate --prompts FILE` with the MiniLM judges, then `divcfg report`.
The page has the plot, the table with the text figure, the training curves and every shown
generation as escaped text (never as markup). Importing the report core, and rendering a text run,
loads no music module."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from markupsafe import escape  # noqa: E402

from divcfg.cli import main as cli  # noqa: E402
from divcfg.domains.text import split_of  # noqa: E402

from test_hf_cli import ADJ, NOUN, finetune_args, make_tiny_lm  # noqa: E402
from test_report import _open_in_chromium, chromium  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MARKUP_WORDS = ["<script>", "</script>", "&"]   # what a page must never pass through as markup
MUSIC_MODULES = ("divcfg.music", "divcfg.domains.music", "music21", "miditok", "symusic")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_markup_lm(folder: Path) -> Path:
    """test_hf_cli's tiny GPT-2, whose vocabulary also holds ``MARKUP_WORDS`` (so it can generate them)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    make_tiny_lm(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.add_tokens(MARKUP_WORDS) == len(MARKUP_WORDS)
    lm = AutoModelForCausalLM.from_pretrained(folder)
    torch.manual_seed(0)
    lm.resize_token_embeddings(len(tok))
    lm.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> tuple[dict, Path, Path]:
    """(results.json, the evaluation folder, report.html) of a text-domain run through the CLI."""
    root = tmp_path_factory.mktemp("text_report")
    lm = make_markup_lm(root / "lm")
    prompts = [f"a {a} song & <script> about the {n}" for a in ADJ for n in NOUN]
    assert sum(split_of(p) == "test" for p in prompts) >= 3
    prompt_file = root / "prompts.txt"
    prompt_file.write_text("\n".join(prompts) + "\n")
    students = {}
    for name, beta in (("distilled", "0"), ("diverse", "2")):
        students[name] = root / name
        assert cli(finetune_args(lm, prompt_file, students[name], "--beta", beta, "--max-steps", "3")) == 0
    out = root / "eval"
    assert cli(["evaluate", "--base", f"hf:{lm}", "--quality", f"hf:{students['distilled']}",
                "--diversity", f"hf:{students['diverse']}", "--prompts", str(prompt_file), "--num-prompts", "3",
                "--generations", "2", "--max-new-tokens", "12", "--batch-size", "6", "--cfg-gammas", "3",
                "--temperatures", "1.5", "--lams", "0,0.5,1", "--bootstrap", "20", "--out", str(out)]) == 0
    assert cli(["report", str(out), "--prompts", "2", "--generations", "2"]) == 0
    return json.loads((out / "results.json").read_text()), out, out / "report.html"


def _shown(results: dict, out: Path, n_prompts: int = 2, n_generations: int = 2) -> list[dict]:
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return [s for s in samples if s["prompt_index"] < n_prompts and s["generation"] < n_generations]


def test_text_report_has_plot_table_curves_and_escaped_generations(text_run):
    results, out, page = text_run
    text = page.read_text(encoding="utf-8")
    assert results["domain"] == "text"
    # the plane: embedded and as files
    assert 'id="qd-plot" src="data:image/png;base64,' in text
    assert (out / "report_assets" / "quality_diversity.png").stat().st_size > 5000
    assert (out / "report_assets" / "quality_diversity.svg").read_text().lstrip().startswith("<?xml")
    # the table: every system, the text domain's figure, no music column
    assert 'id="results-table"' in text and 'id="fronts-table"' in text
    for r in results["systems"]:
        assert f'<td class="name">{escape(r["label"])}' in text
    assert "<th>distinct word bigrams</th>" in text and "pitch-class" not in text and "MIDI" not in text
    assert 'id="training-plot"' in text   # the students' metrics.jsonl, recorded by evaluate
    # the generations: every shown completion, escaped, once per shown (system, prompt, generation)
    shown = _shown(results, out)
    completions = [s["completion"] for s in shown]
    assert any(w in c for c in completions for w in ("<", "&")), "the tiny LM should write some markup words"
    section = text.split('<h2 id="samples">', 1)[1].split('<h2 id="provenance">', 1)[0]
    blocks = re.findall(r'<pre class="generation">(.*?)</pre>', section, flags=re.S)
    assert sorted(blocks) == sorted(str(escape(c)) for c in completions if c.strip())
    assert section.count('<div class="cell text-cell">') == len(shown)
    assert "<script>" not in text and "</script>" not in text
    assert "&lt;script&gt;" in section and "&amp;" in section
    # the prompts, escaped, as the headings of the sample section
    for p in results["prompts"][:2]:
        assert f'<h3 class="prompt">“{escape(p["text"])}”</h3>' in section
        assert html.unescape(str(escape(p["text"]))) == p["text"]
    # only files under report_assets/ are linked, and they exist
    links = [u for u in re.findall(r'(?:src|href)="([^"]+)"', text) if not u.startswith(("data:", "#"))]
    assert links and all(u.startswith("report_assets/") and (out / u).is_file() for u in links)


def _music_modules_after(code: str) -> list[str]:
    probe = f"import sys; {code}; print([m for m in sys.modules if m.startswith({MUSIC_MODULES!r})])"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    return eval(r.stdout.strip().splitlines()[-1])


def test_the_report_core_does_not_import_music():
    assert _music_modules_after("import divcfg.report, divcfg.report.page, divcfg.report.section") == []
    # the probe sees music modules where they are loaded
    assert "divcfg.music.tokenizer" in _music_modules_after("import divcfg.domains.music_report, "
                                                            "divcfg.music.tokenizer")


def test_rendering_a_text_run_loads_no_music_module(text_run, tmp_path):
    import shutil
    copy = tmp_path / "eval"
    shutil.copytree(text_run[1], copy)
    code = f"from divcfg.report import render_report; render_report({str(copy)!r}, n_prompts=1, n_generations=1)"
    assert _music_modules_after(code) == []
    assert (copy / "report.html").read_text(encoding="utf-8").count('<div class="cell text-cell">') > 0


@chromium
def test_text_report_opens_in_chromium(text_run, tmp_path):
    """Headless Chromium loads the text page with no console error and no failed request, and the
    markup words stay text (no script element appears in the DOM)."""
    _, out, _ = text_run
    dom, console, requests = _open_in_chromium(out, "report.html", tmp_path)
    assert 'id="samples"' in dom and 'class="generation"' in dom
    assert "<script>" not in dom and "&lt;script&gt;" in dom
    assert console == [], console
    failed = [(p, c) for p, c in requests if c != 200]
    assert ("/report.html", 200) in requests and not failed, failed
