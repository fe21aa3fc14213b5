"""The audit sections in a build: labelled dataset -> SPEC's keys; no labels -> said in place."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from reportgen.commands.build import build
from tests.project import GOOD, make_project

LABELLED = GOOD + """dataset:
  root: data
sections:
  robustness: {images: 6, severities: [1, 2], corruptions: [gaussian_noise, brightness]}
"""


def _dataset(root, labelled: bool = True):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog", "bird"):
        folder = root / "data" / cls if labelled else root / "data"   # unlabelled: no class folders
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{cls}{i}.png")


@pytest.fixture(scope="module")
def labelled_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    spec = make_project(root, LABELLED)
    _dataset(root)
    return build(spec, out_dir=root / "site", only=["errors", "calibration", "robustness"], use_cache=False)


def test_errors_keys_are_specs(labelled_report):
    e = labelled_report.data["sections"]["errors"]
    assert {"n", "accuracy", "accuracy_ci", "classes", "confusion", "per_class", "top_confusions",
            "confident_errors"} <= set(e)
    assert e["n"] == 12 and e["classes"] == ["cat", "dog", "bird"]
    assert np.array(e["confusion"]).sum() == 12 and np.array(e["confusion"]).shape == (3, 3)
    assert e["accuracy_ci"][0] <= e["accuracy"] <= e["accuracy_ci"][1]
    assert set(e["per_class"]["cat"]) >= {"n", "precision", "recall", "recall_ci"}
    for m in e["confident_errors"]:
        assert set(m) >= {"image", "true", "predicted", "confidence"} and m["image"].startswith("data/")


def test_calibration_keys_are_specs(labelled_report):
    c = labelled_report.data["sections"]["calibration"]
    assert {"n", "bins", "ece", "ece_ci", "adaptive_ece", "nll", "brier", "temperature",
            "ece_after_temperature", "reliability"} <= set(c)
    assert c["bins"] == 15 and len(c["reliability"]["count"]) == 15 and sum(c["reliability"]["count"]) == 12


def test_robustness_keys_are_specs(labelled_report):
    r = labelled_report.data["sections"]["robustness"]
    assert {"severities", "images", "clean_accuracy", "corruptions", "mean_accuracy_drop", "worst"} <= set(r)
    assert r["severities"] == [1, 2] and r["images"] == 6
    assert set(r["corruptions"]) == {"gaussian_noise", "brightness"}
    assert all(len(v["accuracy"]) == 2 and len(v["flip_rate"]) == 2 for v in r["corruptions"].values())
    page = labelled_report.path.read_text()
    for anchor in ('id="errors"', 'id="calibration"', 'id="robustness"', "class-underperforms", "fragile-"):
        assert anchor in page


def test_robustness_on_too_few_images_is_shown_not_judged(labelled_report):
    """Six labelled images: one image is 17 % of them, over half the 25 % threshold: no verdict."""

    ids = [f["id"] for f in labelled_report.data["findings"]]
    assert "robustness-not-judged" in ids and not [i for i in ids if i.startswith("fragile-")]
    finding = next(f for f in labelled_report.data["findings"] if f["id"] == "robustness-not-judged")
    assert finding["severity"] == "info" and "at least 8 labelled images" in finding["evidence"]
    assert "not judged: 6 image(s)" in labelled_report.path.read_text()


def test_thresholds_are_findings_options(tmp_path):
    from reportgen.sections.registry import findings_options

    found = findings_options()
    assert {"class_gap", "ece", "robustness_drop"} <= set(found)


def test_without_labels_errors_and_calibration_say_why_and_robustness_reports_flips(tmp_path):
    spec = make_project(tmp_path, LABELLED)
    _dataset(tmp_path, labelled=False)
    report = build(spec, out_dir=tmp_path / "site", only=["errors", "calibration", "robustness"], use_cache=False)
    s = report.data["sections"]
    assert "labelled" in s["errors"]["skipped"] and "labelled" in s["calibration"]["skipped"]
    r = s["robustness"]
    assert r["clean_accuracy"] is None and r["mean_accuracy_drop"] is None
    assert all(v["accuracy"] is None for v in r["corruptions"].values())
    assert r["worst"]["flip_rate"] >= 0


def test_every_dataset_reader_shares_one_dataset_pass(tmp_path, monkeypatch):
    """Top-k, embeddings, errors and calibration: one forward of each dataset image, not four."""
    from reportgen.analyses import dataset_pass

    calls = []
    real = dataset_pass.dataset_pass
    monkeypatch.setattr(dataset_pass, "dataset_pass", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    spec = make_project(tmp_path, LABELLED)
    _dataset(tmp_path)
    report = build(spec, out_dir=tmp_path / "site", only=["topk", "embeddings", "errors", "calibration"],
                   use_cache=False)
    assert len(calls) == 1
    taps = calls[0]
    assert taps.topk_layers and taps.features_layer and taps.labels is not None
    sections = report.data["sections"]
    assert all("error" not in sections[n] and "skipped" not in sections[n]
               for n in ("topk", "embeddings", "errors", "calibration"))
    n = len(list((tmp_path / "data").rglob("*.png")))
    assert sections["topk"]["images"] == sections["embeddings"]["images"] == sections["errors"]["n"] == n


def test_a_second_build_reads_all_three_from_the_cache(tmp_path, monkeypatch):
    from reportgen.analyses import dataset_pass, robustness

    spec = make_project(tmp_path, LABELLED)
    _dataset(tmp_path)
    only = ["errors", "calibration", "robustness"]
    first = build(spec, out_dir=tmp_path / "a", only=only, cache_dir=tmp_path / "cache")
    calls = []
    for module, name in ((dataset_pass, "dataset_pass"), (robustness, "robustness_pass")):
        monkeypatch.setattr(module, name, lambda *a, _n=name, **k: calls.append(_n))
    second = build(spec, out_dir=tmp_path / "b", only=only, cache_dir=tmp_path / "cache")
    assert calls == []      # the views are plain JSON, so each section's entry was stored
    a, b = first.data["sections"], second.data["sections"]
    for name in only:
        for key in set(a[name]) - {"budget"}:    # the budget entry says what was spent: cached now
            assert a[name][key] == b[name][key], (name, key, a[name][key], b[name][key])


def test_robustness_ladder_ends_at_the_judged_severity_on_few_images():
    """Auto gives way from all five severities on every image to severity 2 alone on 16 images, each rung cheaper."""
    from types import SimpleNamespace

    from reportgen.sections.robustness import JUDGED_SEVERITY, MIN_JUDGED_IMAGES, RobustnessSection

    section = RobustnessSection({})
    ctx = SimpleNamespace(dataset=[None] * 200)
    ladder = section._ladder(ctx, section.options)
    assert ladder[0] == {"severities": [1, 2, 3, 4, 5], "images": 200}
    assert ladder[-1]["severities"] == [JUDGED_SEVERITY]
    assert ladder[-1]["images"] == MIN_JUDGED_IMAGES
    costs = [v["images"] * (1 + 15 * len(v["severities"])) for v in ladder]
    assert costs == sorted(costs, reverse=True) and len(set(costs)) == len(costs)
    written = RobustnessSection({"images": 40}).options
    assert section._ladder(ctx, written)[-1] == {"severities": [JUDGED_SEVERITY], "images": 40}
    assert [v["images"] for v in section._ladder(SimpleNamespace(dataset=[None] * 10), section.options)] == [10, 10, 10]


@pytest.mark.parametrize("labelled,expected", [(8, ["fragile-blur"]), (7, ["robustness-not-judged"])])
def test_fragility_is_judged_where_one_image_is_at_most_half_the_threshold(labelled, expected):
    """The same halving of accuracy under blur: a warning on 8 labelled images (one image 12.5 %, half of
    the 25 % threshold), an info note on 7."""
    from types import SimpleNamespace

    from reportgen.analyses.robustness import RobustnessResult
    from reportgen.sections.robustness import RobustnessSection, RobustnessSectionResult

    half = labelled // 2
    r = RobustnessResult(("blur", "brightness"), (2,), labelled, labelled, labelled,
                         np.array([[half], [labelled]]), np.array([[labelled - half], [0]]))
    ctx = SimpleNamespace(threshold=lambda key: 0.25)
    found = RobustnessSection({}).findings(RobustnessSectionResult(r, ["a"], "", labelled), ctx)
    assert [f.id for f in found] == expected
    assert found[0].severity == ("warning" if labelled == 8 else "info")
    from reportgen.sections.robustness import fewest_judged

    assert (fewest_judged(0.25), fewest_judged(0.1), fewest_judged(0.5), fewest_judged(0.0)) == (8, 20, 4, 1)
