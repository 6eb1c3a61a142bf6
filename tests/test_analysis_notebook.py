"""The papermill-parameterised ablation notebook: stored clean, runs against a real store."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from _analysis_fixtures import planted_store

NOTEBOOK = Path(__file__).resolve().parents[1] / "analysis" / "notebooks" / "ablation_report.ipynb"


def test_notebook_is_stored_without_outputs_and_without_logic():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    parameters = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1
    for name in ("study", "tracking_uri", "metric", "expectations", "interval"):
        assert f"{name} = " in parameters[0].source
    source = "\n".join(cell.source for cell in code)
    assert "def " not in source and "class " not in source  # logic lives in analysis/
    imports = [line for line in source.splitlines() if "import " in line]
    assert imports == ["import analysis"]


@pytest.mark.slow
def test_notebook_runs_against_a_real_study(tmp_path):
    papermill = pytest.importorskip("papermill")
    out = tmp_path / "report.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(out),
        parameters={"study": "planted", "tracking_uri": planted_store()},
        cwd=str(tmp_path),
        kernel_name="python3",
        progress_bar=False,
    )
    nb = nbformat.read(out, as_version=4)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "opposite sign" in text and "smaller drop" in text and "Student t" in text
    assert "run `make benchmark`" in text  # no reports/benchmark.json in the working folder
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 6  # deltas and learning curves of three ablations
    tables = [o for o in outputs if "text/html" in o.get("data", {})]
    assert any("status FAILED" in o.data["text/html"] for o in tables)


@pytest.mark.slow
def test_make_notebook_writes_the_notebook_and_an_html_copy_beside_the_dashboard(tmp_path, capsys):
    pytest.importorskip("papermill")
    from analysis.__main__ import main

    args = ["notebook", "planted", "--tracking-uri", planted_store(), "--out", str(tmp_path)]
    assert main(args) == 0
    notebook, page = (Path(p) for p in capsys.readouterr().out.strip().splitlines()[-2:])
    assert notebook == tmp_path / "planted" / "ablation_report.ipynb"
    assert page == tmp_path / "planted" / "ablation_report.html"  # beside index.html
    nb = nbformat.read(notebook, as_version=4)
    assert all(o.output_type != "error" for c in nb.cells for o in c.get("outputs", []))
    html = page.read_text()
    assert "opposite sign" in html and html.count("data:image/png;base64,") == 6
    assert "<script" not in html.lower() and "Content-Security-Policy" in html


@pytest.mark.slow
def test_the_notebook_judges_with_the_expectations_and_interval_it_is_given(tmp_path, capsys):
    """``--expectations`` and ``--interval`` reach the notebook's verdicts (they were ignored)."""
    pytest.importorskip("papermill")
    from analysis.__main__ import main

    expected = NOTEBOOK.parents[2] / "conf" / "expectations.yaml"
    mine = tmp_path / "mine.yaml"
    mine.write_text(expected.read_text().replace("psalm: [-30, -20]", "psalm: [-77, -66]"))
    args = ["notebook", "planted", "--tracking-uri", planted_store(), "--out", str(tmp_path)]
    assert main([*args, "--expectations", str(mine), "--interval", "normal"]) == 0
    notebook = Path(capsys.readouterr().out.strip().splitlines()[-2])
    nb = nbformat.read(notebook, as_version=4)
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "-77" in text and "TFA" in text, text[:3000]
    assert "Student t" not in text
