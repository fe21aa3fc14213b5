"""Notebooks: reports display inline (a sandboxed iframe, a one-line repr), explain() maps draw
over their images, and example_configs/notebook.ipynb runs for real in a Jupyter kernel."""
from __future__ import annotations

import html
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import reportgen
from reportgen.commands.notebook import displayable, heatmaps, show_explanations
from tests.project import make_project

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "example_configs" / "notebook.ipynb"


def test_report_shows_as_a_sandboxed_iframe_holding_the_page(tmp_path):
    report = reportgen.build(make_project(tmp_path), only=["summary"], cache_dir=tmp_path / "cache")
    shown = report._repr_html_()
    assert shown.startswith('<iframe title="tiny" sandbox="allow-scripts" srcdoc="')
    srcdoc = re.search(r'srcdoc="([^"]*)"', shown).group(1)
    assert html.unescape(srcdoc) == report.path.read_text()
    assert "height:80vh" in shown
    text = repr(report)
    assert text == f"<reportgen build 'tiny': no findings; {report.path}>" and len(text) < 300


def test_maps_over_images(make_cnn, make_images):
    images = make_images(n=3, h=16, w=16)
    pictures = displayable(images, mean=[0.5] * 3, std=[0.25] * 3)
    assert pictures.shape == (3, 16, 16, 3) and 0 <= pictures.min() and pictures.max() <= 1
    assert displayable(images[:, :1]).shape == (3, 16, 16, 3)                  # grey becomes RGB
    attributions = torch.randn(3, 3, 16, 16)
    heat = heatmaps(attributions)
    assert heat.shape == (3, 16, 16)
    np.testing.assert_allclose(heat.max(axis=(1, 2)), 1.0)
    maps = reportgen.explain(make_cnn(), images, "gradcam")
    fig = show_explanations(images, maps, titles=["a", "b", "c"], columns=2)
    assert len([ax for ax in fig.axes if ax.images]) == 3 and fig.axes[0].get_title() == "a"
    with pytest.raises(ValueError, match="2 titles for 3 images"):
        show_explanations(images, maps, titles=["a", "b"])


@pytest.mark.slow
def test_the_example_notebook_runs_in_a_kernel(demo_dir, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("REPORTGEN_DEMO_DIR", str(demo_dir))
    monkeypatch.setenv("REPORTGEN_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = [o.data for o in outputs if o.output_type in ("execute_result", "display_data")]
    frames = [d["text/html"] for d in shown if "<iframe" in d.get("text/html", "")]
    assert len(frames) == 2 and all('sandbox="allow-scripts" srcdoc="' in f for f in frames)
    assert "reportgen build" in frames[0] or "ShapesNet" in frames[0]
    assert sum("image/png" in d for d in shown) >= 2                          # the explain overlays
    text = "\n".join(str(o) for o in outputs)
    text = text.replace("http://www.w3.org/2000/svg", "")    # inline SVG's namespace name: never fetched
    assert "http://" not in text and "https://" not in text                    # no external URL anywhere
    print(f"nbclient: {len(nb.cells)} cells, {len(outputs)} outputs, {len(frames)} report iframes "
          f"({', '.join(f'{len(f):,} chars' for f in frames)}), "
          f"{sum('image/png' in d for d in shown)} figures, 0 errors")
