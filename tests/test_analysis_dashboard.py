"""The study dashboard: self-contained, escaped, and clean in a real headless Chromium."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from _analysis_fixtures import XSS_NAME, XSS_TAG, as_frame, planted_store, planted_study

from analysis import analyze_runs, load_runs
from analysis.__main__ import main
from analysis.dashboard import _claims

UI = "http://127.0.0.1:5000"


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory) -> Path:
    """``python -m analysis report planted`` on the planted store, with a benchmark file."""
    folder = tmp_path_factory.mktemp("reports")
    benchmark = folder / "benchmark.json"
    models = {
        "cheaf": {"params": 1_700_000, "latency_ms": 41.0, "peak_mem_mb": 300},
        "psalm": {"params": 800_000, "latency_ms": 30.0, "peak_mem_mb": 390},
    }
    benchmark.write_text(json.dumps({"device": "cpu", "batch": 2, "models": models}))
    args = ["report", "planted", "--tracking-uri", planted_store(), "--out", str(folder)]
    args += ["--ui-url", UI + "/", "--benchmark", str(benchmark)]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(args) == 0
    path = Path(stdout.getvalue().strip().splitlines()[-1])  # the command prints the page's path
    assert path == folder / "planted" / "index.html"
    return path


def test_dashboard_has_verdicts_plots_claims_and_run_links(dashboard):
    html = dashboard.read_text()
    for verdict in ("within", "smaller drop", "larger drop", "opposite sign", "inconclusive"):
        assert f">{verdict}</span>" in html
    assert "95 % CI: Student t over per-seed deltas" in html
    for ablation in ("pyramid", "conv", "support"):
        assert f"id='ablation-{ablation}'" in html
    assert html.count("data:image/png;base64,") == 2 * 3  # deltas + learning curves each
    assert "PSALM is faster than CHEAF" in html and "1.760 M" in html
    runs = load_runs("planted", planted_store())
    for run in runs.itertuples():  # every run links to its MLflow page
        assert f"{UI}/#/experiments/{run.experiment_id}/runs/{run.run_id}" in html
    assert "status FAILED" in html and "unpaired baseline" in html
    assert "tags.params_fusion" in html  # evidence that the ablations took effect


def test_missing_benchmark_says_how_to_make_it(tmp_path):
    analysis = analyze_runs(as_frame(planted_study()), "planted")
    html = _claims(analysis, tmp_path / "benchmark.json")
    assert "not found" in html and "make benchmark" in html


def test_dashboard_is_self_contained_and_escaped(dashboard):
    html = dashboard.read_text()
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert XSS_TAG not in html and "&lt;img src=x onerror=alert(2)&gt;" in html
    sources = re.findall(r"""\bsrc=['"]([^'"]*)""", html)
    assert sources and all(s.startswith("data:") for s in sources)
    assert not re.search(r"""<link[^>]+href=['"]https?:""", html)


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed "
            "(apt-get install -y chromium chromium-driver)"
        )
    return browser, driver


@pytest.mark.slow
def test_dashboard_in_headless_chromium(dashboard, tmp_path):
    browser, driver_path = _chromium()
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,2400",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(dashboard.as_uri())
        assert driver.title == "planted: ablation dashboard"
        with pytest.raises(NoAlertPresentException):
            driver.switch_to.alert.text  # noqa: B018  (an injected alert() would be open)
        assert driver.find_elements(By.TAG_NAME, "script") == []
        text = driver.find_element(By.TAG_NAME, "body").text
        assert XSS_NAME in text and XSS_TAG in text  # shown as text, not markup
        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) == 6
        assert all(driver.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images)
        verdict_rows = driver.find_elements(By.CSS_SELECTOR, "#verdicts + table tbody tr")
        assert len(verdict_rows) == 7
        shot = tmp_path / "dashboard.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == [], errors
    finally:
        driver.quit()
