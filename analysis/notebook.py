"""The ablation notebook, executed for one study: ``make notebook STUDY=…``.

Runs ``analysis/notebooks/ablation_report.ipynb`` with papermill (parameters ``study``,
``tracking_uri``, ``metric``) and writes the executed notebook and a self-contained HTML copy
beside the study's dashboard (``reports/<study>/``). The HTML copy is rendered here, not by
nbconvert (not a dependency): markdown and code as text, outputs as text, PNG images and the
tables pandas rendered, under the same no-script Content-Security-Policy as the dashboard.
"""

from __future__ import annotations

import html as html_lib
from pathlib import Path

from analysis import _html
from analysis._html import esc

NOTEBOOK = Path(__file__).resolve().parent / "notebooks" / "ablation_report.ipynb"


def run_notebook(
    study: str,
    out_dir: str | Path = "reports",
    tracking_uri: str | None = None,
    metric: str | None = None,
    cwd: str | Path | None = None,
    expectations: str | Path | None = None,
    interval: str = "t",
) -> tuple[Path, Path]:
    """Execute the notebook for ``study``; returns the paths of the notebook and its HTML copy.
    ``metric``, ``expectations`` and ``interval`` as in ``analysis.analyze_study``."""
    import nbformat
    import papermill

    folder = Path(out_dir) / _html.safe_dirname(study)
    folder.mkdir(parents=True, exist_ok=True)
    notebook = folder / "ablation_report.ipynb"
    # executed beside its place and moved there only once it ran through: a failed run does not
    # replace the last good notebook (whose HTML copy would then no longer match it)
    running = folder / "ablation_report.running.ipynb"
    try:
        papermill.execute_notebook(
            str(NOTEBOOK),
            str(running),
            parameters={
                "study": study,
                "tracking_uri": tracking_uri,
                "metric": metric,
                # absolute: the kernel may run in another folder (``cwd``)
                "expectations": None if expectations is None else str(Path(expectations).resolve()),
                "interval": interval,
            },
            cwd=str(cwd) if cwd else None,
            kernel_name="python3",
            progress_bar=False,
        )
        running.replace(notebook)
    finally:
        running.unlink(missing_ok=True)
    page = folder / "ablation_report.html"
    page.write_text(notebook_html(nbformat.read(notebook, as_version=4), study), encoding="utf-8")
    return notebook, page


def notebook_html(nb, study: str) -> str:
    """An executed notebook as one self-contained HTML page (no script)."""
    parts = [f"<h1>Ablation notebook: {esc(study)}</h1>"]
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            parts.append(f"<pre class='md'>{esc(cell.source)}</pre>")
            continue
        if cell.cell_type != "code":
            continue
        parts.append(f"<pre class='code'>{esc(cell.source)}</pre>")
        for output in cell.get("outputs", []):
            parts.append(_output_html(output))
    return _html.page(f"{study}: ablation notebook", "\n".join(parts))


def _output_html(output) -> str:
    kind = output.get("output_type")
    if kind == "stream":
        return f"<pre>{esc(output.get('text', ''))}</pre>"
    if kind == "error":
        return f"<pre class='error'>{esc(output.get('ename'))}: {esc(output.get('evalue'))}</pre>"
    data = output.get("data", {})
    if "image/png" in data:
        png = "".join(data["image/png"].split())
        return f"<img alt='figure' src='data:image/png;base64,{esc(png)}'>"
    if "text/html" in data and "<script" not in data["text/html"].lower():
        return str(data["text/html"])  # pandas' own tables: it escapes cell text
    if "text/plain" in data:
        return f"<pre>{esc(html_lib.unescape(str(data['text/plain'])))}</pre>"
    return ""
