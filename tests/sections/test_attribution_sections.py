"""The cam, gradients and occlusion sections end to end on the tiny project.

TinyNet is conv1 -> relu -> global average pool -> fc, so every CAM method
applies; a variant with a flattening head shows the per-method error note.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import reportgen
import reportgen.analyses.explain
from reportgen.analyses import faithfulness as fa
from reportgen.cli import main
from reportgen.sections.attribution import AttributionResult, CamSection, MethodResult
from reportgen.sections.base import BuildContext
from tests.project import GOOD, make_project

SECTIONS = ["cam", "gradients", "occlusion"]
OPTIONS = """\
sections:
  cam: {methods: [cam, gradcam], top_classes: 2}
  gradients: {methods: [saliency, integrated_gradients], steps: 8}
  occlusion: {window: 8, stride: 4, baseline: grey}
"""

# TinyNet's checkpoints, but a head that flattens instead of pooling: CAM does not apply.
FLAT_HEAD = '''
import torch
from torch import nn

class TinyNet(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.relu(self.conv1(x))), 1))
'''

# TinyNet that only sees a 2-pixel frame of its input: attribution must sit on the border.
FRAME_ONLY = '''
import torch
from torch import nn

class TinyNet(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        keep = torch.ones_like(x)
        keep[:, :, 2:-2, 2:-2] = 0
        return self.fc(torch.flatten(self.pool(self.relu(self.conv1(x * keep))), 1))
'''


def _build(spec: Path, tmp_path: Path) -> "reportgen.commands.build.Report":
    return reportgen.build(spec, only=SECTIONS, cache_dir=tmp_path / "cache")


def _replace_model(root: Path, source: str, ckpt_from_module: bool) -> None:
    """Swap tinynet.py; with ckpt_from_module, re-save the checkpoint from the new class."""
    (root / "tinynet.py").write_text(source)
    if ckpt_from_module:
        namespace: dict = {}
        exec(compile(source, "tinynet.py", "exec"), namespace)
        torch.manual_seed(1)
        torch.save({"model_state_dict": namespace["TinyNet"](3).state_dict()}, root / "ckpt" / "epoch_1.pt")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attr")
    report = _build(make_project(tmp, GOOD + OPTIONS), tmp)
    return report, json.loads(report.json_path.read_text()), report.path.read_text()


def test_report_json_has_layer_auc_and_sanity_per_method(built):
    _, data, _ = built
    cam = data["sections"]["cam"]
    assert cam["layer"] == "relu" and cam["layer_auto"] is True   # last spatial layer of TinyNet
    assert cam["probes"] == ["a.png", "b.png"] and len(cam["targets"]) == 2
    assert cam["target_source"] == ["predicted", "predicted"]
    for name in ("cam", "gradcam"):
        m = cam["methods"][name]
        assert len(m["deletion_auc"]) == len(m["insertion_auc"]) == 2
        assert all(0.0 <= v <= 1.0 for v in m["deletion_auc"] + m["insertion_auc"])
        assert set(m["sanity"]) >= {"spearman", "pearson", "ssim", "mean_spearman", "passed", "threshold"}
        assert len(m["border_share"]) == 2
    faith = cam["faithfulness"]
    assert faith["steps"] == 32 and faith["steps_auto"] is True
    assert len(faith["random_baseline"]["deletion_auc"]) == 2
    assert cam["top_classes"] and len(cam["top_classes"][0]) == 2
    assert "seed 0" in cam["sanity"]["randomized"]


def test_gradients_report_the_ig_completeness_delta(built):
    _, data, _ = built
    grads = data["sections"]["gradients"]
    assert "layer" not in grads                     # input attributions: no layer to choose
    ig = grads["methods"]["integrated_gradients"]
    assert len(ig["completeness_delta"]) == len(ig["relative_delta"]) == 2
    assert all(abs(d) < 0.05 * max(abs(g), 1e-3) for d, g in zip(ig["completeness_delta"], ig["target_score_gap"]))
    assert "sanity" in grads["methods"]["saliency"]


def test_occlusion_reports_the_class_per_position(built):
    _, data, _ = built
    occ = data["sections"]["occlusion"]["methods"]["occlusion"]
    assert occ["settings"]["window"] == [8, 8] and occ["settings"]["stride"] == [4, 4]
    assert occ["settings"]["baseline"] == "per-channel constant"   # grey in pixel units
    assert occ["settings"]["baseline_option"] == "grey"
    assert np.asarray(occ["top_class_per_position"]).shape == (2, 3, 3)
    assert len(occ["deletion_auc"]) == 2 and len(occ["flipped_share"]) == 2
    assert "sanity" not in data["sections"]["occlusion"]


def test_occlusion_target_names_the_class_its_maps_explain(built, tmp_path):
    """sections.occlusion.target: a class name explains that class in every probe (not the predicted
    one): other maps, and report.json says which class and that the spec chose it."""
    report, data, _ = built
    occ = data["sections"]["occlusion"]
    assert occ["target_source"] == ["predicted", "predicted"]
    classes = ["cat", "dog", "bird"]
    other = next(i for i in range(3) if i not in occ["targets"])      # a class no probe predicts
    spec = report.path.parent.parent / "spec.yaml"
    named = spec.with_name("occlusion-target.yaml")     # beside the project: its paths are relative
    named.write_text(spec.read_text().replace("baseline: grey}", f"baseline: grey, target: {classes[other]}}}"))
    again = reportgen.build(named, only=["occlusion"], out_dir=tmp_path / "named", use_cache=False)
    got = json.loads(again.json_path.read_text())["sections"]["occlusion"]
    assert got["targets"] == [other, other] and got["target_source"] == ["spec", "spec"]
    before, after = (r.results["occlusion"]["methods"]["occlusion"]["maps"] for r in (report, again))
    assert before.shape == after.shape and not np.allclose(before, after)
    # a list, one per probe, with predicted for the second
    named.write_text(spec.read_text().replace("baseline: grey}", f"baseline: grey, target: [{other}, predicted]}}"))
    listed = reportgen.build(named, only=["occlusion"], out_dir=tmp_path / "listed", use_cache=False)
    got = json.loads(listed.json_path.read_text())["sections"]["occlusion"]
    assert got["targets"] == [other, occ["targets"][1]] and got["target_source"] == ["spec", "predicted"]


def test_html_has_a_figure_per_probe_with_alt_text_colour_bar_and_tables(built):
    _, _, html = built
    for name in SECTIONS:
        body = html.split(f'<section id="{name}"', 1)[1].split("</section>", 1)[0]
        assert body.count('class="attr-probe"') == 2, name
        assert "Colour scale" in body and "Deletion AUC" in body, name
        for img in re.findall(r"<img [^>]*>", body):
            assert 'alt="' in img and 'alt=""' not in img, img
            assert re.search(r'src="data:image/(png|webp);base64,', img), img[:80]
    cam = html.split('<section id="cam"', 1)[1].split("</section>", 1)[0]
    assert '<details class="attr-topk">' in cam and "top 2 classes" in cam   # collapsed by default
    assert "model-parameter randomization" in cam
    grads = html.split('<section id="gradients"', 1)[1].split("</section>", 1)[0]
    assert "completeness" in grads and "99th" in grads
    occ = html.split('<section id="occlusion"', 1)[1].split("</section>", 1)[0]
    assert "Most likely class while occluded" in occ
    assert "<details open" not in html


def test_results_are_numpy_and_render_is_deterministic(built, tmp_path):
    report, _, html = built
    maps = report.results["cam"]["methods"]["gradcam"]["maps"]
    assert isinstance(maps, np.ndarray) and maps.shape == (2, 16, 16)
    spec = report.path.parent.parent / "spec.yaml"
    again = reportgen.build(spec, only=SECTIONS, out_dir=tmp_path / "again", use_cache=False)
    assert again.path.read_text() == html


def test_cam_on_a_non_gap_head_is_a_note_and_gradcam_still_renders(tmp_path):
    spec = make_project(tmp_path, GOOD + "sections:\n  cam: {methods: [cam, gradcam]}\n")
    _replace_model(tmp_path, FLAT_HEAD, ckpt_from_module=True)
    report = reportgen.build(spec, only=["cam"], cache_dir=tmp_path / "cache")
    data = json.loads(report.json_path.read_text())
    cam = data["sections"]["cam"]
    assert "global-average-pool" in cam["methods"]["cam"]["error"]
    assert len(cam["methods"]["gradcam"]["deletion_auc"]) == 2
    ids = {f["id"]: f for f in data["findings"]}
    assert ids["method-unavailable-cam"]["severity"] == "info"
    html = report.path.read_text()
    body = html.split('<section id="cam"', 1)[1].split("</section>", 1)[0]
    assert "CAM is not shown" in body and "global-average-pool" in body
    assert body.count('class="attr-probe"') == 2 and "Grad-CAM" in body
    assert "could not be computed" not in body      # the section itself did not fail


def test_attribution_on_the_frame_only_is_a_border_finding(tmp_path):
    spec = make_project(tmp_path, GOOD + "sections:\n  gradients: {methods: [saliency]}\n")
    _replace_model(tmp_path, FRAME_ONLY, ckpt_from_module=False)   # same parameters as TinyNet
    report = reportgen.build(spec, only=["gradients"], cache_dir=tmp_path / "cache")
    data = json.loads(report.json_path.read_text())
    assert data["sections"]["gradients"]["methods"]["saliency"]["border_share"] == [1.0, 1.0]
    finding = {f["id"]: f for f in data["findings"]}["border-saliency"]
    assert finding["severity"] == "warning" and finding["section"] == "gradients"


def test_class_names_are_escaped(tmp_path):
    spec = make_project(tmp_path, GOOD.replace("classes: [cat, dog, bird]",
                                               "classes: [\"<b>cat</b>\", \"dog&co\", \"x\\\" onload=\\\"y\"]")
                        + "sections:\n  occlusion: {window: 8, stride: 8}\n  cam: {top_classes: 3}\n")
    html = reportgen.build(spec, only=["cam", "occlusion"], cache_dir=tmp_path / "cache").path.read_text()
    assert "<b>cat</b>" not in html and 'onload="y' not in html
    assert "&lt;b&gt;cat&lt;/b&gt;" in html


def test_failing_sanity_check_becomes_a_warning_finding():
    bad = fa.SanityResult(method="gradcam", spearman=np.array([0.9, 0.8]), pearson=np.array([0.9, 0.8]),
                          ssim=np.array([0.9, 0.8]), threshold=0.5, mean_spearman=0.85, passed=False)
    m = MethodResult("gradcam", maps=np.zeros((2, 8, 8), np.float32), border_share=np.array([0.1, 0.1]),
                     sanity=bad)
    result = AttributionResult(
        section="cam", probe_names=["a", "b"], image_size=(8, 8), targets=np.array([0, 1]),
        target_from_spec=[False, False], probs=np.full((2, 2), 0.5), methods={"gradcam": m}, steps=8,
        steps_auto=True, deletion_baseline="zero", insertion_baseline="blur",
        random_deletion_auc=np.zeros(2), random_insertion_auc=np.zeros(2), border_frac=0.1,
        border_area_share=fa.border_area_share(8, 8), layer="conv1", layer_auto=True)
    ctx = BuildContext(model=torch.nn.Identity(), device=torch.device("cpu"), input_size=(3, 8, 8), probes=[],
                       classes=["a", "b"], checkpoints=[], spec={"findings": {}})
    (finding,) = CamSection({}).findings(result, ctx)
    assert finding.id == "sanity-gradcam" and finding.severity == "warning" and finding.layer == "conv1"
    assert "0.85" in finding.evidence and "Adebayo" in finding.evidence


def test_torchscript_model_gets_notes_not_errors(tmp_path):
    """Hooks cannot reach inside TorchScript: CAM methods and guided backprop say so (info),
    saliency still runs, and nothing trips --fail-on error."""
    make_project(tmp_path)
    namespace: dict = {}
    exec(compile((tmp_path / "tinynet.py").read_text(), "tinynet.py", "exec"), namespace)
    torch.manual_seed(0)
    net = namespace["TinyNet"](3).eval()
    torch.jit.trace(net, torch.zeros(1, 3, 16, 16)).save(str(tmp_path / "model.pt"))
    spec = tmp_path / "ts.yaml"
    spec.write_text("title: ts\nmodel: {torchscript: model.pt, input_size: [3, 16, 16]}\n"
                    "probes: {images: [probes/*.png]}\nclasses: [cat, dog, bird]\n"
                    "sections:\n  cam: {methods: [gradcam]}\n  gradients: {methods: [saliency, guided_backprop]}\n")
    report = reportgen.build(spec, only=["cam", "gradients"], cache_dir=tmp_path / "cache")
    data = json.loads(report.json_path.read_text())
    assert "error" in data["sections"]["cam"]["methods"]["gradcam"]
    assert "TorchScript" in data["sections"]["gradients"]["methods"]["guided_backprop"]["error"]
    assert len(data["sections"]["gradients"]["methods"]["saliency"]["deletion_auc"]) == 2
    assert {f["severity"] for f in data["findings"]} <= {"info", "warning"}, data["findings"]


def test_a_value_error_inside_a_method_is_an_error_finding_not_a_note(tmp_path, monkeypatch):
    """Only NotApplicable means "does not apply here"; a ValueError from inside a method is a bug:
    an error finding that trips --fail-on error, while the other methods still render."""
    def broken(model, images, target=None, *, output_key=None):
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setitem(reportgen.analyses.explain._METHODS, "saliency", broken)
    spec = make_project(tmp_path, GOOD + "sections:\n  gradients: {methods: [saliency, guided_backprop]}\n")
    assert main(["build", str(spec), "--quiet", "--only", "gradients", "--no-cache", "--fail-on", "error"]) == 3
    data = json.loads((tmp_path / "site" / "report.json").read_text())
    ids = {f["id"]: f for f in data["findings"]}
    assert ids["method-failed-saliency"]["severity"] == "error"
    assert "method-unavailable-saliency" not in ids
    assert data["sections"]["gradients"]["methods"]["saliency"]["error"] == \
        "ValueError: operands could not be broadcast together"
    assert len(data["sections"]["gradients"]["methods"]["guided_backprop"]["deletion_auc"]) == 2
