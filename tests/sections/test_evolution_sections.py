"""The evolution and curves sections through reportgen.build on a tiny project."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import reportgen
from reportgen.errors import InputError
from tests.browser import BrowserSession, chromium_available
from tests.project import GOOD, make_project

ONLY = ["evolution", "curves"]
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:|//)|url\(\s*["']?\s*(?:https?:|//)""",
                      re.IGNORECASE)


def write_series(root: Path, n: int = 5, accs=(0.5, 0.6, 0.7, 0.8, 0.72), explode_last: bool = False) -> None:
    """TinyNet checkpoints: conv1 frozen, fc moving; val_acc per checkpoint as given."""
    for old in (root / "ckpt").glob("*.pt"):
        old.unlink()
    g = torch.Generator().manual_seed(0)
    conv_w, conv_b = torch.randn(4, 3, 3, 3, generator=g), torch.randn(4, generator=g)
    fc_w, fc_b = torch.randn(3, 4, generator=g), torch.zeros(3)
    for t in range(n):
        fc_w = fc_w + 0.1 * torch.randn(3, 4, generator=g)
        scale = 20.0 if explode_last and t == n - 1 else 1.0
        sd = {"conv1.weight": conv_w, "conv1.bias": conv_b, "fc.weight": fc_w * scale, "fc.bias": fc_b + t}
        torch.save({"model": sd, "epoch": t + 1, "metrics": {"val_acc": accs[t]}},
                   root / "ckpt" / f"epoch_{t + 1}.pt")


def project(tmp_path: Path, extra: str = "", **kw) -> Path:
    spec = make_project(tmp_path, GOOD + extra, checkpoints=1)
    write_series(tmp_path, **kw)
    return spec


def build(spec: Path, tmp_path: Path, **kw):
    kw.setdefault("cache_dir", tmp_path / "cache")
    return reportgen.build(spec, only=ONLY, **kw)


def test_evolution_summary_findings_and_html(tmp_path):
    spec = project(tmp_path, explode_last=True)
    report = build(spec, tmp_path)
    data = json.loads(report.json_path.read_text())
    ev = data["sections"]["evolution"]
    assert ev["checkpoints"] == [f"epoch_{i}" for i in range(1, 6)] and ev["checkpoint_loads"] == 6
    assert ev["filter_layer"] == "conv1" and ev["filter_layer_auto"] is True
    assert ev["layers"] == ["conv1", "fc"] and ev["frozen_layers"] == ["conv1"]
    assert ev["drift_step"]["conv1"] == [0.0] * 4 and all(v > 0 for v in ev["drift_step"]["fc"])
    assert len(ev["norms"]["fc"]) == 5 and ev["activations_layer"] and ev["probe"] == "a.png"
    ids = {f["id"]: f for f in data["findings"]}
    assert ids["frozen-layers"]["layer"] == "conv1" and ids["frozen-layers"]["severity"] == "warning"
    assert ids["weight-norm-explosion"]["layer"] == "fc"
    assert "weight-norm-vanishing" not in ids
    reg = ids["metric-regression"]            # val_acc 0.8 -> 0.72: 8 points
    assert reg["section"] == "curves" and "val_acc" in reg["title"] and "8.00 points" in reg["title"]
    assert data["sections"]["curves"]["checkpoints"]["final"]["val_acc"] == pytest.approx(0.72)
    html = report.path.read_text()
    assert html.count('class="evo-slider"') == 2 and 'data-frame="' in html
    assert "@media print" in html and "evo-strip" in html
    assert html.count("<svg") >= 3 and "frozen</span>" in html
    assert not EXTERNAL.search(html)
    cached = build(spec, tmp_path)             # from the section cache: same bytes
    assert set(cached.data["cached"]) == set(ONLY) and cached.path.read_bytes() == html.encode()


def test_thresholds_come_from_the_spec(tmp_path):
    spec = project(tmp_path, explode_last=True)
    report = build(spec, tmp_path)
    # the findings schema may not list the new keys yet: set them the way resolve leaves them
    loaded = reportgen.commands.build.load_spec(spec)
    loaded["findings"].update(norm_growth=1000.0, regression_points=10.0)
    again = reportgen.build(loaded, only=ONLY, use_cache=False)
    assert {"weight-norm-explosion", "metric-regression"} <= {f["id"] for f in report.findings}
    assert not {"weight-norm-explosion", "metric-regression"} & {f["id"] for f in again.findings}


def test_fewer_than_two_checkpoints_is_a_note(tmp_path):
    spec = make_project(tmp_path, GOOD, checkpoints=1)
    report = build(spec, tmp_path)
    skipped = {"skipped": "needs at least two checkpoints; the spec gives 1"}
    assert report.data["sections"]["evolution"] == skipped
    assert "skipped" in report.data["sections"]["curves"]
    assert report.findings == []
    html = report.path.read_text()
    assert "Not shown: needs at least two checkpoints; the spec gives 1. List the checkpoints" in html
    assert "No training curves" in html


def test_metrics_file_curves_and_deterministic_output(tmp_path):
    spec = project(tmp_path, "metrics: log.csv\n")
    rows = "".join(f"{s},{1 / (s + 1):.4f},{0.5 + 0.01 * s}\n" for s in range(2000))
    (tmp_path / "log.csv").write_text("step,train_loss,val_loss\n" + rows)
    report = build(spec, tmp_path, use_cache=False)
    curves = report.data["sections"]["curves"]["file"]
    assert curves["source"] == "csv" and curves["points"] == {"train_loss": 2000, "val_loss": 2000}
    assert any(f["id"] == "metric-regression" and "val_loss" in f["title"] for f in report.findings)
    html = report.path.read_text()
    assert "From <code>log.csv</code>" in html
    again = build(spec, tmp_path, use_cache=False, out_dir=tmp_path / "other")
    assert again.path.read_bytes() == report.path.read_bytes()


def test_bad_metrics_file_is_an_input_error_with_the_line(tmp_path):
    spec = project(tmp_path, "metrics: log.csv\n")
    (tmp_path / "log.csv").write_text("step,loss\n1,0.5\n2,nan?\n")
    with pytest.raises(InputError, match=r"log\.csv: line 3"):
        build(spec, tmp_path, use_cache=False)


def test_hostile_labels_and_metric_names_are_escaped(tmp_path):
    spec = project(tmp_path, "metrics: log.jsonl\n")
    labelled = "  - {path: ckpt/epoch_1.pt, label: \"<script>alert('ck')</script>\"}\n  - ckpt/*.pt"
    text = (tmp_path / "spec.yaml").read_text().replace("  - ckpt/*.pt", labelled)
    (tmp_path / "spec.yaml").write_text(text)
    bad = "</svg><script>alert('m')</script>_loss"
    (tmp_path / "log.jsonl").write_text("".join(json.dumps({"step": s, bad: 1.0 / (s + 1)}) + "\n"
                                                for s in range(3)))
    html = build(spec, tmp_path, use_cache=False).path.read_text()
    assert "<script>alert" not in html and "</svg><script>" not in html
    assert "&lt;script&gt;alert(&#39;ck&#39;)&lt;/script&gt;" in html


@pytest.mark.browser
@pytest.mark.skipif(not chromium_available(), reason="needs chromium + chromedriver")
def test_slider_moves_frames_without_console_errors(tmp_path):
    spec = project(tmp_path)
    report = build(spec, tmp_path)
    with BrowserSession() as session:
        result = session.check(report.path, tmp_path / "shot.png")
        assert result.console_errors == [] and result.requests == []
        driver = session.driver
        state = driver.execute_script("""
            var s = document.querySelector('#evolution input.evo-slider');
            s.value = '1'; s.dispatchEvent(new Event('input'));
            var imgs = document.querySelectorAll('#evolution img[data-frame]');
            return {t: Array.prototype.map.call(imgs, function (i) {
                        return [i.style.transform, i.getAttribute('data-frame')]; }),
                    label: document.querySelector('#evolution output.evo-label').textContent,
                    others: Array.prototype.map.call(document.querySelectorAll('#evolution input.evo-slider'),
                                                     function (x) { return x.value; })};""")
        assert state["label"] == "epoch_2" and state["others"] == ["1", "1"]
        for transform, frame in state["t"]:
            assert transform == f"translateY(-{frame}px)"
        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert errors == []
