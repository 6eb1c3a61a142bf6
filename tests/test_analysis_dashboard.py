"""The study dashboard: self-contained, escaped, and clean in a real headless Chromium."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from _analysis_fixtures import (
    XSS_NAME,
    XSS_TAG,
    as_frame,
    planted_store,
    planted_study,
    ratio_of_means,
)
from matplotlib.colors import to_hex
from matplotlib.patches import Rectangle

from analysis import analyze_runs, load_runs, plot_deltas
from analysis.__main__ import main
from analysis.dashboard import _claims
from analysis.plots import BAND_COLOR

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


@pytest.mark.slow
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
    # evidence that the ablations took effect: its own section, before the efficiency claims
    assert "<h2 id='took-effect'>Did each ablation take effect?</h2>" in html
    assert html.index("id='took-effect'") < html.index("id='claims'")
    assert "<th>params fusion</th>" in html
    # one line per arm: what it removes (study file), what the report claims (expectations)
    assert "<b>cheaf / no_pyramid</b> removes the multi-scale pyramid" in html
    assert "the report predicts CHEAF loses 10 to 15" in html
    assert "ratio of paired means" in html
    assert "plumbing check" not in html  # a default-profile study has real verdicts


def test_missing_benchmark_says_how_to_make_it(tmp_path):
    analysis = analyze_runs(as_frame(planted_study()), "planted")
    html = _claims(analysis, tmp_path / "benchmark.json")
    assert "not found" in html and "make benchmark" in html


@pytest.mark.slow
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


def _headless_chromium():
    """A headless Chromium at 1,400 px wide that records the console."""
    browser, driver_path = _chromium()
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

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
        "--window-size=1400,2400",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=options)


@pytest.mark.slow
@pytest.mark.browser
def test_dashboard_in_headless_chromium(dashboard, tmp_path):
    driver = _headless_chromium()
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

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
        verdict_rows = driver.find_elements(By.CSS_SELECTOR, "#verdicts + div table tbody tr")
        assert len(verdict_rows) == 7
        # readable at 1,400 px: no table (the took-effect one included) runs off the page
        width = driver.execute_script("return document.documentElement.clientWidth")
        assert width <= 1400
        assert driver.execute_script("return document.documentElement.scrollWidth") <= width
        took = driver.find_element(By.CSS_SELECTOR, "#took-effect + div table")
        assert took.rect["x"] + took.rect["width"] <= width
        shot = tmp_path / "dashboard.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == [], errors
    finally:
        driver.quit()


def _support_plot():
    analysis = analyze_runs(as_frame(planted_study()), "planted")
    return analysis, plot_deltas(analysis, "support")


def test_delta_plot_has_a_legend_and_a_colour_per_seed():
    _, fig = _support_plot()
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert labels[:4] == ["seed 0", "seed 1", "seed 2", "seed 3"]
    assert {"mean ± CI (colour: verdict)", "report's expected range", "no change"} <= set(labels)
    ax = fig.axes[0]  # cheaf: support_none (4 seeds) and support_shuffled (4 seeds)
    dots = [c for c in ax.collections if len(c.get_offsets()) and c.get_facecolors().size]
    colours = {to_hex(c) for col in dots for c in col.get_facecolors()}
    assert len(colours) >= 4  # the seeds of an arm are told apart


def test_delta_plot_axis_shows_band_and_interval_and_no_band_under_controls():
    analysis, fig = _support_plot()
    rows = analysis.verdicts.set_index(["model", "arm"])
    for ax, model in zip(fig.axes, ["cheaf", "psalm"], strict=True):
        low, high = ax.get_ylim()
        expected = analysis.expectations.range_for("support", model)
        assert low <= expected.low and expected.high <= high
        for arm in ("support_none", "support_shuffled"):
            row = rows.loc[(model, arm)]
            if row.n >= 2:
                assert low <= row.ci_low and row.ci_high <= high
        bands = [
            p
            for p in ax.patches
            if isinstance(p, Rectangle) and to_hex(p.get_facecolor()) == BAND_COLOR
        ]
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        assert ticks == ["support_none", "support_shuffled"]
        # one band, behind support_none (x = 0) only: support_shuffled is a control
        assert len(bands) == 1 and bands[0].get_x() < 0 < bands[0].get_x() + bands[0].get_width()


def test_delta_plot_keeps_a_wild_seed_from_hiding_the_band():
    runs = [r for r in planted_study() if r.ablation == "pyramid"]
    wild = [
        r
        if (r.arm, r.seed) != ("no_pyramid", 3) or r.model != "psalm"
        else r.__class__(**{**r.__dict__, "value": 4.0})
        for r in runs
    ]
    analysis = analyze_runs(as_frame(wild), "wild")
    fig = plot_deltas(analysis, "pyramid")
    psalm = fig.axes[1]
    low, high = psalm.get_ylim()
    assert low <= -30 and -20 <= high  # the band stays in view
    row = analysis.verdicts.set_index(["model", "arm"]).loc[("psalm", "no_pyramid")]
    assert row.delta_rel_mean > 0 and row.delta_abs_mean > 0  # one sign for both deltas
    assert ratio_of_means([-5, -4, -6, -5]) < 0


@pytest.mark.slow
def test_smoke_study_dashboard_says_plumbing_check_and_greys_verdicts(tmp_path):
    args = ["report", "tiny-smoke", "--tracking-uri", planted_store(), "--out", str(tmp_path)]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main([*args, "--no-mlflow"]) == 0
    html = Path(stdout.getvalue().strip().splitlines()[-1]).read_text()
    assert "<p class='banner' id='plumbing'>plumbing check, no verdicts" in html
    assert "class='verdict v-greyed' title='plumbing check, no verdicts'>within<" in html
    assert "class='verdict v-within'" not in html


@pytest.mark.slow
def test_dashboard_shows_the_load_bearing_column(tmp_path):
    args = ["report", "gated", "--tracking-uri", planted_store(), "--out", str(tmp_path)]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main([*args, "--no-mlflow"]) == 0
    html = Path(stdout.getvalue().strip().splitlines()[-1]).read_text()
    assert "<th>load-bearing</th>" in html
    assert "1.5 % (use_pyramid): inert" in html and "20.0 % (use_pyramid_refinement): ok" in html
    assert "support_none: not measured" in html
    assert ">not testable: use_pyramid is inert in the baseline (1.5 %)</span>" in html
    assert "v-not-testable" in html


@pytest.fixture(scope="module")
def comparison(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("compare")
    args = ["compare", "planted", "planted_b", "--tracking-uri", planted_store()]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main([*args, "--out", str(folder)]) == 0
    return Path(stdout.getvalue().strip().splitlines()[-1])


@pytest.mark.slow  # its fixture writes two studies' dashboards
def test_compare_page_overlays_both_studies_plots(comparison):
    html = comparison.read_text()
    for ablation in ("pyramid", "support", "conv"):
        assert f"id='overlay-{ablation}'" in html
    assert html.count("data:image/png;base64,") == 3
    assert "same study" not in html


def test_compare_warns_when_both_sides_are_the_same_study(tmp_path, capsys):
    args = ["compare", "planted", "planted", "--tracking-uri", planted_store()]
    assert main([*args, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert "warning: A and B are the same study (planted)" in out.err
    page = Path(out.out.strip().splitlines()[-1])
    assert "the same study (planted) in the same store" in page.read_text()


@pytest.mark.slow
@pytest.mark.browser
def test_compare_page_in_headless_chromium(comparison):
    driver = _headless_chromium()
    from selenium.webdriver.common.by import By

    try:
        driver.get(comparison.as_uri())
        assert driver.title == "planted vs planted_b"
        assert driver.find_elements(By.TAG_NAME, "script") == []
        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) == 3  # one overlay per ablation
        assert all(driver.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images)
        width = driver.execute_script("return document.documentElement.clientWidth")
        assert driver.execute_script("return document.documentElement.scrollWidth") <= width
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == [], errors
    finally:
        driver.quit()
