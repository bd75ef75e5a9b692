"""`divcfg listen` end to end in real headless Chromium (Selenium + Debian chromium-driver): a rater
answers trials from the keyboard, each answer is in SQLite by the time the page says "saved", markup
in a prompt is shown as text, the audio players load the clips, and a reload resumes at the next
unanswered trial. The browser is installed by `make`: without it these tests fail, they do not skip."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from divcfg.listening.app import BackgroundServer, create_app
from divcfg.listening.cli import prepare

from test_listening_app import INJECTION, make_run, study_config

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.fixture
def browser(tmp_path):
    for tool in (CHROMIUM, CHROMEDRIVER):
        assert Path(tool).exists(), f"{tool} is missing: `make` installs Debian chromium and chromium-driver"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chrome-profile'}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def study(tiny_data_dir, tmp_path):
    run = make_run(Path(tiny_data_dir), tmp_path / "run", inject_all=True)
    study_dir = prepare(run, study_config(quality_trials=3, diversity_trials=2), progress=False)
    return study_dir


def _rows(study_dir: Path, sql: str, args=()) -> list[tuple]:
    con = sqlite3.connect(study_dir / "answers.sqlite")
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def test_rater_answers_by_keyboard_and_resumes(browser, study):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    app = create_app(study)
    trials = app.state.study["trials"]
    wait = WebDriverWait(browser, 30)

    def keys(*ks):
        ActionChains(browser).send_keys(*ks).perform()

    def current_trial() -> str:
        wait.until(lambda d: d.find_element(By.ID, "trial").is_displayed()
                   and d.find_element(By.ID, "trial").get_attribute("data-trial-id"))
        return browser.find_element(By.ID, "trial").get_attribute("data-trial-id")

    with BackgroundServer(app) as server:
        browser.get(server.url + "?rater=kbd")
        seen, answered = [], 0
        for step in range(3):
            tid = current_trial()
            assert tid not in seen
            seen.append(tid)
            assert browser.find_element(By.ID, "progress-text").text == f"{step} of 5 answered"
            # markup in the prompt is text: shown literally, nothing ran, no element created
            prompt = browser.find_element(By.ID, "prompt")
            assert prompt.text.startswith(INJECTION)
            assert prompt.find_elements(By.XPATH, "./*") == []
            assert browser.execute_script("return window.__pwned === undefined")
            kind = trials[tid]["kind"]
            audio = "#q-audio" if kind == "quality" else "#pair-A audio"
            wait.until(lambda d: d.execute_script(
                f"const a = document.querySelector('{audio}'); return a.readyState >= 1 && a.duration > 1"))
            if kind == "quality":
                keys("4", "2")
                keys(Keys.ENTER)  # incomplete: refused on the page, nothing sent
                wait.until(lambda d: "rate all three" in d.find_element(By.ID, "status").text)
                keys("5", Keys.ENTER)
                expected = (4, 2, 5, None)
            else:
                keys("b", Keys.ENTER)
                expected = (None, None, None, "B")
            wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-saved-trial") == tid)
            # "saved" is on the page: the answer must already be committed
            assert _rows(study, "SELECT acoustic, adherence, musicality, choice FROM answers WHERE rater_id = ? "
                                "AND trial_id = ?", ("kbd", tid)) == [expected]
            answered += 1
            wait.until(lambda d: d.find_element(By.ID, "trial").get_attribute("data-trial-id") != tid)
        # leave and come back: the next unanswered trial in the rater's order
        browser.refresh()
        tid = current_trial()
        order = [t for (t,) in _rows(study, "SELECT trial_id FROM assignments WHERE rater_id = 'kbd' "
                                            "ORDER BY position")]
        assert order[:3] == seen and tid == order[3]
        assert browser.find_element(By.ID, "progress-text").text == "3 of 5 answered"
        for t in order[3:]:
            wait.until(lambda d: d.find_element(By.ID, "trial").get_attribute("data-trial-id") == t)
            keys(*(("3", "3", "3") if trials[t]["kind"] == "quality" else ("a",)), Keys.ENTER)
            wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-saved-trial") == t)
        wait.until(lambda d: d.find_element(By.ID, "done").is_displayed())
        assert browser.find_element(By.ID, "progress-text").text == "5 of 5 answered"
        logs = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert logs == [], logs
    rows = _rows(study, "SELECT trial_id, served_at, answered_at FROM answers WHERE rater_id = 'kbd'")
    assert sorted(r[0] for r in rows) == sorted(order) and all(r[1] and r[2] >= r[1] for r in rows)


def test_rater_name_form_and_token(browser, study):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    app = create_app(study, token="tok-123456789")
    wait = WebDriverWait(browser, 30)
    with BackgroundServer(app) as server:
        browser.get(server.url)
        assert "access link" in browser.find_element(By.TAG_NAME, "body").text  # no token: 403 page
        browser.get(server.url + "?token=tok-123456789")
        field = wait.until(lambda d: d.find_element(By.ID, "rater-input"))
        wait.until(lambda d: field.is_displayed())
        field.send_keys("bad name", Keys.ENTER)
        wait.until(lambda d: "rater name" in d.find_element(By.ID, "status").text)
        field.clear()
        field.send_keys("ana", Keys.ENTER)
        wait.until(lambda d: d.find_element(By.ID, "trial").get_attribute("data-trial-id"))
        assert "rater=ana" in browser.current_url and "token=tok-123456789" in browser.current_url
        src = browser.execute_script("return [...document.querySelectorAll('audio')].map(a => a.src)"
                                     ".filter(s => s)")
        assert src and all("token=tok-123456789" in s for s in src)
    assert _rows(study, "SELECT rater_id FROM raters") == [("ana",)]
