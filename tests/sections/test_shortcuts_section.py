"""Known answers for the shortcuts section, on tiny models trained here (tests/shortcut_task.py).

A planted watermark is found, localized and proven by the transplant; the same
task without it raises nothing over several seeds; a watermark that moves is
never a suspect; a compare of the clean model against the watermarked one names
the new shortcut, trips ``--fail-on new-warning`` and shows each class's mean
maps side by side.
"""
from __future__ import annotations

import json

import pytest

import reportgen
from reportgen.cli import main
from reportgen.errors import NotApplicable
from reportgen.sections.base import BuildContext
from reportgen.sections.shortcuts import ShortcutsSection
from tests import shortcut_task as st


@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    """Trained projects shared by this module's tests: spec path per (watermark, seed), trained once."""
    made = {}

    def get(watermark, seed=0):
        if (watermark, seed) not in made:
            made[watermark, seed] = st.write_project(tmp_path_factory.mktemp(f"{watermark}{seed}"), watermark, seed)
        return made[watermark, seed]
    return get


def _build(spec):
    site = spec.parent / "site"
    reportgen.build(str(spec), out_dir=str(site), only=["shortcuts"], use_cache=False)
    return json.loads((site / "report.json").read_text()), (site / "index.html").read_text()


@pytest.fixture(scope="module")
def planted(projects):
    return _build(projects("fixed"))


def test_a_planted_watermark_is_suspected_localized_and_proven(planted):
    report, page = planted
    s = report["sections"]["shortcuts"]
    assert s["method"] == "gradcam" and s["layer"] == "features" and s["layer_auto"]
    assert [x["class"] for x in s["suspected"]] == ["circle"]
    hit = s["suspected"][0]
    y0, x0, y1, x1 = hit["region"]
    patch = [v / st.SIZE for v in (st.CORNER[0], st.CORNER[1], st.CORNER[0] + st.PATCH, st.CORNER[1] + st.PATCH)]
    # the region holds most of the patch: regions are cells of Grad-CAM's coarse grid, and which of two
    # proven neighbouring clusters flips most depends on the trained weights (so on the CPU's kernels)
    held = max(0.0, min(y1, patch[2]) - max(y0, patch[0])) * max(0.0, min(x1, patch[3]) - max(x0, patch[1]))
    assert held >= 0.5 * (patch[2] - patch[0]) * (patch[3] - patch[1]), (hit["region"], patch)
    assert (y1 - y0) * (x1 - x0) <= s["criteria"]["region_area"] + 1e-9
    assert hit["transplant_flip_rate"] >= 0.5
    assert hit["control_flip_rate"] <= 0.05
    assert hit["p_value"] < 1e-6
    ids = [f["id"] for f in report["findings"]]
    assert "shortcut-suspected-circle" in ids
    finding = next(f for f in report["findings"] if f["id"] == "shortcut-suspected-circle")
    assert finding["severity"] == "warning" and finding["section"] == "shortcuts"
    circle = s["classes"]["circle"]
    assert circle["images"] == 100 and 1 <= circle["k"] <= 4 and len(circle["eigenvalues"]) == 5
    keys = {"size", "region", "mass_in_region", "location_spread", "transplant_flip_rate", "control_flip_rate",
            "transplanted", "p_value"}
    for cls in s["classes"].values():
        assert sum(c["size"] for c in cls["clusters"]) == cls["images"]
        for c in cls["clusters"]:
            assert keys <= set(c)
    assert "Proven by intervention:</span> the model relies on a small fixed region for circle" in page
    assert page.count('class="sc-spectrum"') == 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_same_task_without_the_watermark_raises_nothing(projects, seed):
    report, page = _build(projects(None, seed))
    s = report["sections"]["shortcuts"]
    assert s["suspected"] == []
    assert not [f for f in report["findings"] if f["id"].startswith("shortcut-suspected")]
    assert "Proven by intervention: no shortcut" in page


def test_a_watermark_that_moves_is_not_a_suspect(projects):
    report, _ = _build(projects("moving"))
    s = report["sections"]["shortcuts"]
    assert s["suspected"] == []
    spreads = [c["location_spread"] for c in s["classes"]["circle"]["clusters"] if c["size"] >= 3]
    assert min(spreads) > s["criteria"]["max_spread"]


def test_a_compare_of_a_clean_model_against_a_watermarked_one_names_the_new_shortcut(projects, tmp_path, capsys):
    base, new = projects(None), projects("fixed")       # trained once, shared with the tests above
    out = tmp_path / "compare"
    assert main(["compare", str(base), str(new), "-o", str(out), "--only", "shortcuts", "--no-cache", "--quiet",
                 "--fail-on", "new-warning"]) == 3
    assert "Class circle may rely on a shortcut" in capsys.readouterr().err
    data = json.loads((out / "report.json").read_text())
    assert data["comparison"]["audit"]["shortcuts"] == {"base": [], "new": ["circle"]}
    assert "New suspected shortcut(s): circle." in data["verdict"]
    finding = next(f for f in data["findings"] if f["id"] == "shortcut-suspected-circle")
    assert finding["state"] == "new" and finding["severity"] == "warning"
    page = (out / "index.html").read_text()
    table = page[page.index('id="audit-shortcuts"'):]
    table = table[:table.index("</table>")]
    for name in st.CLASSES:                         # each class: BASE | NEW mean maps side by side
        assert f"<th>{name}</th>" in table
    assert table.count("<img ") == 2 * len(st.CLASSES)
    assert table.count("suspected shortcut") == 1 and "Mean attribution map of circle for NEW, suspected" in table


def test_without_class_folders_it_says_why(tmp_path):
    ctx = BuildContext(model=None, device=None, input_size=(3, 8, 8), probes=[], classes=["a", "b"],
                       checkpoints=[], spec={}, dataset=[(tmp_path / "x.png", None)])
    with pytest.raises(NotApplicable, match="labelled dataset"):
        ShortcutsSection({}).analyze(ctx, ShortcutsSection({}).options)
