"""Builds that fit a budget, end to end on tiny models: choices, estimates, captions, --budget, page size.

The machine's speed is injected (``throughput.measure`` is replaced), so every
assertion is about the plan, never about how long anything took.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

import reportgen
from reportgen.cli import main
from reportgen.commands import planning
from reportgen.engine import budget as bud
from reportgen.engine import throughput as tp
from tests.project import GOOD, make_project

FAST = bud.Throughput(0.001, 0.003, 4, "cpu", "measured")
SLOW = bud.Throughput(2.0, 6.0, 1, "cpu", "measured")
ATTRIBUTION = ["cam", "gradients", "occlusion"]


@pytest.fixture
def speed(monkeypatch):
    """Set the measured throughput: ``speed(SLOW)``; FAST until then. Tiny models are timed too."""
    state = {"t": FAST}
    monkeypatch.setattr(tp, "measure", lambda *a, **k: state["t"])
    monkeypatch.setattr(bud, "SMALL_MODEL_MACS", 0)

    def set_speed(t: bud.Throughput) -> None:
        state["t"] = t
    return set_speed


def build(spec: Path, tmp_path: Path, **kw) -> "reportgen.commands.build.Report":
    kw.setdefault("cache_dir", tmp_path / "cache")
    return reportgen.build(spec, **kw)


def test_small_model_keeps_todays_settings_and_reports_them(tmp_path, speed):
    spec = make_project(tmp_path, GOOD + "sections:\n  gradients: {methods: [saliency, integrated_gradients, "
                                         "smoothgrad]}\n")
    data = build(spec, tmp_path, only=ATTRIBUTION + ["featureviz"]).data
    b = data["budget"]
    assert b["seconds"] == 90 and b["source"] == "default for cpu" and not b["over"]
    assert b["throughput"]["forward_s_per_image"] == FAST.forward_s
    assert {"planned_s", "actual_s", "reserve_s", "measure_s", "page"} <= set(b)
    grads = data["sections"]["gradients"]["budget"]
    assert grads["choices"] == {"steps": 32, "samples": 16, "faithfulness_steps": 32, "scored_probes": 2}
    assert grads["scaled"] == [] and grads["estimated_s"] == grads["full_s"]
    assert grads["actual_s"] >= 0
    occ = data["sections"]["occlusion"]["budget"]
    assert occ["choices"] == {"window": 16, "stride": 8, "faithfulness_steps": 32,
                              "scored_probes": 2}   # 16 px input: fits
    assert data["sections"]["occlusion"]["methods"]["occlusion"]["settings"]["window"] == [16, 16]
    assert data["sections"]["cam"]["faithfulness"]["steps"] == 32
    assert data["sections"]["cam"]["faithfulness"]["steps_auto"] is True
    assert data["sections"]["featureviz"]["budget"]["choices"] == {"steps": 128}
    assert data["sections"]["featureviz"]["steps"] == 128
    page = Path(data and build(spec, tmp_path, only=["gradients"]).path).read_text()
    assert "Automatic settings: integrated-gradients steps 32, SmoothGrad samples 16, deletion/insertion " \
           "steps 32, probes scored 2, the full settings, which fit the build&#39;s 90 s time budget. " \
           "Estimated " in page


def test_demo_sized_model_plans_the_old_defaults_from_its_macs(tmp_path, monkeypatch):
    """ShapesNet at 64 px with six probes is never timed: its plan is the same on any machine."""
    import numpy as np
    from PIL import Image

    from reportgen.commands.build import make_context, selected_sections
    from reportgen.sections.registry import registry
    from reportgen.spec import load_spec
    from reportgen.spec.resolve import resolve

    (tmp_path / "probes").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "probes" / f"{i}.png")
    (tmp_path / "spec.yaml").write_text("title: demo-like\nmodel:\n  factory: reportgen.demo.net:ShapesNet\n"
                                        "  input_size: [3, 64, 64]\nprobes: {images: [probes/*.png]}\n"
                                        "sections:\n  occlusion: {window: 8, stride: 4}\n")
    spec = load_spec(tmp_path / "spec.yaml")
    ctx = make_context(resolve(spec, "cpu"))
    sections = {n: registry()[n](spec["sections"].get(n) or {}) for n in selected_sections(spec, None)}
    monkeypatch.setattr(tp, "measure", lambda *a, **k: pytest.fail("a small model must not be timed"))
    rate, _ = planning.throughput(ctx, 90, tmp_path / "store", planning.forward_macs(ctx))
    assert rate.source == "reference" and rate == bud.reference(planning.forward_macs(ctx))
    plan = bud.plan(planning.section_needs(sections, ctx), rate, 90)
    assert not plan.long and not plan.over
    for name in ("cam", "gradients", "occlusion", "featureviz"):
        sp = plan.sections[name]
        assert sp.scaled == () and sp.choices == {**sp.best}, name
    assert plan.sections["occlusion"].choices == {"window": 8, "stride": 4, "faithfulness_steps": 32,
                                                  "scored_probes": 6}
    assert plan.sections["gradients"].choices == {"steps": 32, "faithfulness_steps": 32, "scored_probes": 6}
    assert planning.page_shares(sections, ctx, 5_000_000) == {}


def test_a_slow_machine_scales_auto_settings_down_and_says_why(tmp_path, speed):
    spec = make_project(tmp_path)
    speed(SLOW)
    report = build(spec, tmp_path, only=["gradients"], budget=60)
    grads = report.data["sections"]["gradients"]["budget"]
    assert grads["choices"]["steps"] < 32 and grads["choices"]["faithfulness_steps"] < 32
    assert {"steps", "faithfulness_steps"} <= set(grads["scaled"])
    assert grads["estimated_s"] < grads["full_s"]
    assert report.data["sections"]["gradients"]["faithfulness"]["steps"] == grads["choices"]["faithfulness_steps"]
    assert report.data["budget"]["seconds"] == 60 and report.data["budget"]["source"] == "--budget"
    page = report.path.read_text()
    assert "scaled down from integrated-gradients steps 32, deletion/insertion steps 32" in page
    estimate = f"Estimated {bud.duration(grads['estimated_s'])} on this machine."
    assert estimate in page and ", took " not in page   # actual time only with output.timestamp


def test_scoring_gives_way_to_fewer_probes_once_its_steps_are_at_their_fewest(tmp_path, speed):
    """Deletion/insertion on the first probes only: the scores and the page say which."""
    spec = make_project(tmp_path)
    speed(SLOW)
    report = build(spec, tmp_path, only=["cam"], budget=8)
    cam = report.data["sections"]["cam"]
    assert cam["budget"]["choices"]["faithfulness_steps"] == bud.FAITHFULNESS_STEPS[-1]
    assert cam["budget"]["choices"]["scored_probes"] == 1
    assert "scored_probes" in cam["budget"]["scaled"]
    assert cam["faithfulness"]["probes"] == cam["probes"][:1] and len(cam["probes"]) == 2
    method = next(iter(cam["methods"].values()))
    assert len(method["deletion_auc"]) == len(cam["faithfulness"]["random_baseline"]["deletion_auc"]) == 1
    page = report.path.read_text()
    assert "Scored on the first 1 of the 2 probes" in page
    assert cam["sanity"]["probes"] == cam["probes"][:1]                 # the randomization check too
    assert "Run on the first 1 of the 2 probes" in page


def test_caption_adds_the_actual_time_when_the_spec_asks_for_run_specific_text(tmp_path, speed):
    spec = make_project(tmp_path, GOOD + "output: {timestamp: true}\n")
    speed(SLOW)
    report = build(spec, tmp_path, only=["gradients"], budget=60, use_cache=False)
    took = report.data["sections"]["gradients"]["budget"]["actual_s"]
    assert f"on this machine, took {bud.duration(took)}." in report.path.read_text()


def test_a_written_setting_is_honoured_with_an_estimate_when_long(tmp_path, speed, capsys):
    spec = make_project(tmp_path, GOOD + "sections:\n  occlusion: {window: 4, stride: 2}\n")
    speed(SLOW)
    report = build(spec, tmp_path, only=["occlusion"])
    err = capsys.readouterr().err
    # 2 probes x (1 + 7 x 7 positions) forward passes at 2 s
    assert "reportgen: occlusion with window 4, stride 2 on 2 probes: about 3 min at the measured 2 s/pass" in err
    occ = report.data["sections"]["occlusion"]
    assert occ["budget"]["choices"]["window"] == 4 and occ["budget"]["choices"]["stride"] == 2
    assert occ["methods"]["occlusion"]["settings"]["window"] == [4, 4]
    assert "window" not in occ["budget"]["auto"]
    assert report.data["budget"]["over"] and "reportgen: even the lowest automatic settings take about" in err
    speed(FAST)
    build(spec, tmp_path, only=["occlusion"], use_cache=False)
    assert "occlusion with" not in capsys.readouterr().err


def test_budget_option_parses_and_overrides_the_spec(tmp_path, speed, capsys):
    spec = make_project(tmp_path, GOOD + "budget: 30\n")
    out = tmp_path / "out"
    assert main(["build", str(spec), "--quiet", "--only", "filters", "-o", str(out)]) == 0
    b = json.loads((out / "report.json").read_text())["budget"]
    assert (b["seconds"], b["source"]) == (30, "spec")
    assert main(["build", str(spec), "--quiet", "--only", "filters", "-o", str(out), "--budget", "12.5"]) == 0
    b = json.loads((out / "report.json").read_text())["budget"]
    assert (b["seconds"], b["source"]) == (12.5, "--budget")
    assert main(["build", str(spec), "--quiet", "--only", "filters", "-o", str(out), "--budget", "auto"]) == 0
    assert json.loads((out / "report.json").read_text())["budget"]["source"] == "default for cpu"
    for bad in ("0", "-3", "soon", "nan"):
        with pytest.raises(SystemExit) as e:
            main(["build", str(spec), "--budget", bad])
        assert e.value.code == 2
    assert "expected seconds" in capsys.readouterr().err


def test_a_bad_budget_in_the_spec_names_the_key(tmp_path):
    spec = make_project(tmp_path, GOOD + "budget: fast\n")
    assert main(["validate", str(spec)]) == 2


def test_choices_are_part_of_the_cache_key(tmp_path, speed):
    spec = make_project(tmp_path)
    first = build(spec, tmp_path, only=["gradients"])
    again = build(spec, tmp_path, only=["gradients"])
    assert again.data["cached"] == ["gradients"] and again.path.read_bytes() == first.path.read_bytes()
    speed(SLOW)
    slow = build(spec, tmp_path, only=["gradients"], budget=60)
    assert slow.data["cached"] == []          # other choices: computed again, not the fast plan's maps
    assert slow.data["sections"]["gradients"]["budget"]["choices"]["steps"] < 32
    assert slow.data["sections"]["gradients"]["budget"]["lowest"]
    # ten times slower still: the same (lowest) choices, so the cache hits and the page is the same
    speed(bud.Throughput(20.0, 60.0, 1, "cpu", "measured"))
    slower = build(spec, tmp_path, only=["gradients"], budget=60)
    assert slower.data["cached"] == ["gradients"]
    assert slower.data["budget"]["planned_s"] > slow.data["budget"]["planned_s"]
    assert slower.path.read_bytes() == slow.path.read_bytes()


def test_a_close_measurement_keeps_the_stored_one(tmp_path, monkeypatch):
    """Hysteresis: rebuilds on the same machine plan with the same numbers."""
    from types import SimpleNamespace

    monkeypatch.setattr(planning, "forward_macs", lambda ctx: None)
    ctx = SimpleNamespace(spec={"model": {"factory": "x:y"}}, input_size=(3, 8, 8), device=torch.device("cpu"),
                          model=None, output_key=None, example=lambda: None)
    seen = iter([bud.Throughput(0.10, 0.30, 1, "cpu", "measured"), bud.Throughput(0.12, 0.27, 1, "cpu", "measured"),
                 bud.Throughput(0.50, 0.90, 1, "cpu", "measured")])
    monkeypatch.setattr(tp, "measure", lambda *a, **k: next(seen))
    first, _ = planning.throughput(ctx, 90, tmp_path, None)
    second, _ = planning.throughput(ctx, 90, tmp_path, None)
    third, _ = planning.throughput(ctx, 90, tmp_path, None)
    assert (first.forward_s, first.source) == (0.10, "measured")
    assert (second.forward_s, second.source) == (0.10, "stored")
    assert (third.forward_s, third.source) == (0.50, "measured")


def test_measure_leaves_the_model_as_it_was(make_cnn, make_images):
    model = make_cnn().train()
    t = tp.measure(model, make_images(1, h=16, w=16), budget_s=1.0)
    assert t.forward_s > 0 and t.backward_s >= t.forward_s and t.batch >= 1 and t.source == "measured"
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_measure_stops_at_one_timed_pass_when_that_took_its_share(make_cnn, make_images):
    t = tp.measure(make_cnn(), make_images(1, h=16, w=16), budget_s=1e-9)
    assert t.batch == 1 and t.backward_s == pytest.approx(tp.BACKWARD_RATIO * t.forward_s)


def test_the_warm_up_is_never_the_measurement(make_cnn, make_images):
    """A first call ten times slower than the rest (kernel selection, lazy imports) must not price the plan."""
    model = make_cnn()
    calls = []

    def slow_first(module, args):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.5)

    handle = model.register_forward_pre_hook(slow_first)
    try:
        t = tp.measure(model, make_images(1, h=16, w=16), budget_s=1e-9)
    finally:
        handle.remove()
    assert len(calls) == 2 and t.forward_s < 0.25


WIDE = '''
import torch
from torch import nn

class Wide(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 48, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(48, 48, 3, stride=4, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x):
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))
'''


def test_the_page_budget_shrinks_activation_grids(tmp_path, speed):
    text = GOOD.replace("tinynet:TinyNet", "wide:Wide").replace("[3, 16, 16]", "[3, 64, 64]")
    spec = make_project(tmp_path, text.replace("checkpoints:\n  - ckpt/*.pt\n", ""))
    (tmp_path / "wide.py").write_text(WIDE)
    roomy = build(spec, tmp_path, only=["activations"], out_dir=tmp_path / "roomy")
    full = roomy.data["sections"]["activations"]["per_layer"]
    assert {la["channels_shown"] for la in full.values()} == {32}
    assert "page_share_bytes" not in roomy.data["sections"]["activations"].get("budget", {})
    spec.write_text(spec.read_text() + "output: {page_budget: 0.1}\n")
    tight = build(spec, tmp_path, only=["activations"], out_dir=tmp_path / "tight")
    act = tight.data["sections"]["activations"]
    shown = {name: la["channels_shown"] for name, la in act["per_layer"].items()}
    assert min(shown.values()) < 32, shown           # the 64 x 64 maps gave way
    assert max(shown.values()) == 32, shown           # the 16 x 16 ones kept every channel
    assert act["budget"]["page_share_bytes"] > 0
    assert tight.path.stat().st_size < roomy.path.stat().st_size
    assert "so the page stays under its 0.1 MB budget" in tight.path.read_text()
    # written channel counts are honoured whatever the page
    spec.write_text(spec.read_text().replace("output:", "sections: {activations: {max_channels: 24}}\noutput:"))
    honoured = build(spec, tmp_path, only=["activations"], out_dir=tmp_path / "honoured")
    assert {la["channels_shown"] for la in honoured.data["sections"]["activations"]["per_layer"].values()} == {24}


def test_gradient_batches_shrink_to_the_memory_budget(make_cnn, monkeypatch):
    """Big inputs (512 px on ResNet-50): a backward pass keeps every layer's output, per image."""
    from types import SimpleNamespace

    from reportgen.analyses import occlusion
    from reportgen.sections import attribution

    ctx = SimpleNamespace(model=make_cnn(), device=torch.device("cpu"),
                          example=lambda: torch.zeros(1, 3, 32, 32))
    assert attribution.gradient_batch(ctx) == attribution.GRADIENT_BATCH
    # TinyCNN keeps about 6*32*32*3 + 5*16*16*2 floats per image: ~100 kB
    monkeypatch.setattr(occlusion, "default_memory_budget", lambda device: 350_000)
    assert 1 <= attribution.gradient_batch(ctx) < 8
    monkeypatch.setattr(occlusion, "default_memory_budget", lambda device: 1)
    assert attribution.gradient_batch(ctx) == 1


def test_nothing_to_plan_spends_no_pass_on_timing(tmp_path, monkeypatch):
    spec = make_project(tmp_path)
    monkeypatch.setattr(tp, "measure", lambda *a, **k: pytest.fail("nothing to plan: no timing"))
    monkeypatch.setattr(planning, "forward_macs", lambda ctx: pytest.fail("nothing to plan: no MAC count"))
    data = build(spec, tmp_path, only=["summary", "filters"]).data
    assert data["budget"]["throughput"]["source"] == "not measured"
    assert "budget" not in data["sections"]["summary"]


def test_compare_plans_each_model_as_its_build_did_and_reuses_its_sections(tmp_path, speed):
    """A compare with the builds' budget finds both models' planned sections in the cache."""
    spec = make_project(tmp_path)
    speed(SLOW)
    built = build(spec, tmp_path, only=["gradients"], budget=60)
    report = reportgen.compare(spec, spec, out_dir=tmp_path / "cmp", only=["gradients"], budget=60,
                               cache_dir=tmp_path / "cache")
    planned = built.data["sections"]["gradients"]["budget"]["choices"]
    for side in ("base", "new"):
        assert report.data["budget"][side]["seconds"] == 60 and report.data["budget"][side]["source"] == "--budget"
        assert report.data["sections"]["gradients"][side]["budget"]["choices"] == planned
        assert report.data["sections"]["gradients"][side]["budget"]["cached"] is True


def test_a_small_model_runs_its_sections_on_one_cpu_thread(tmp_path, monkeypatch):
    """Short kernels gain nothing from sharing; the caller's thread count comes back after."""
    import torch

    from reportgen.sections.registry import registry

    seen = {}
    cls = registry()["gradients"]
    analyze = cls.analyze

    def spy(self, ctx, options):
        seen["threads"] = torch.get_num_threads()
        return analyze(self, ctx, options)

    monkeypatch.setattr(cls, "analyze", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        report = build(make_project(tmp_path), tmp_path, only=["gradients"])
        assert seen["threads"] == 1 and report.data["budget"]["threads"] == 1
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(bud, "SMALL_MODEL_MACS", 0)       # now "large": torch's own count
        report = build(make_project(tmp_path), tmp_path, only=["gradients"], use_cache=False)
        assert seen["threads"] == 2 and report.data["budget"]["threads"] == 2
    finally:
        torch.set_num_threads(before)


def test_a_compare_of_one_architecture_plans_once_for_both_sides(tmp_path, monkeypatch):
    """Two weights of one architecture: one measurement, one plan, the same choices on both sides
    (planned apart, BASE would get a slow measurement and NEW a fast one)."""
    spec = make_project(tmp_path, checkpoints=2)
    other = tmp_path / "other.yaml"
    other.write_text(GOOD.replace("  - ckpt/*.pt", "  - ckpt/epoch_1.pt"))
    timings = iter([SLOW, FAST, FAST])
    calls = []
    monkeypatch.setattr(tp, "measure", lambda *a, **k: calls.append(1) or next(timings))
    monkeypatch.setattr(bud, "SMALL_MODEL_MACS", 0)
    report = reportgen.compare(spec, other, out_dir=tmp_path / "cmp", only=["gradients"], budget=60,
                               cache_dir=tmp_path / "cache")
    b = report.data["budget"]
    assert len(calls) == 1
    assert b["base"]["choices"] == b["new"]["choices"] and b["base"]["choices"]["gradients"]["steps"] < 32
    assert b["base"]["throughput"] == b["new"]["throughput"] and b["base"]["shared"] and b["new"]["shared"]
    grads = report.data["sections"]["gradients"]
    assert grads["base"]["budget"]["choices"] == grads["new"]["budget"]["choices"]


def test_the_stored_throughput_belongs_to_the_architecture_and_input_size_not_the_weights(make_cnn):
    from types import SimpleNamespace

    def key(model, size=(3, 16, 16)):
        return planning.store_key(SimpleNamespace(model=model, input_size=size, device=torch.device("cpu")))

    assert key(make_cnn(seed=0)) == key(make_cnn(seed=1))                  # other weights: one figure
    quantized = make_cnn(seed=0)
    with torch.no_grad():
        for p in quantized.parameters():
            p.copy_(torch.round(p * 8) / 8)
    assert key(quantized) == key(make_cnn(seed=0))
    assert key(make_cnn()) != key(make_cnn(), (3, 32, 32))                 # another input size
    assert key(make_cnn()) != key(make_cnn(mid=8))                         # another architecture


def test_a_plan_that_overshoots_says_so_and_the_next_build_measures_again(tmp_path, speed, monkeypatch, capsys):
    spec = make_project(tmp_path)
    speed(bud.Throughput(1e-7, 3e-7, 4, "cpu", "measured"))      # estimates far below any real time
    monkeypatch.setattr(bud, "OVERSHOOT_MIN_S", 0.0)
    first = build(spec, tmp_path, only=["gradients"])
    over = first.data["budget"]["overshoot"]
    assert over["sections"] == ["gradients"] and over["actual_s"] > 1.5 * over["estimated_s"]
    err = capsys.readouterr().err
    assert "reportgen: warning: the sections took" in err and "the next build measures the machine again" in err
    assert not list((tmp_path / "cache" / "throughput").glob("*.json"))
    again = build(spec, tmp_path, only=["gradients"])     # same choices: the section comes from the cache
    assert again.data["budget"]["throughput"]["source"] == "measured"     # not the dropped figure
    assert again.data["cached"] == ["gradients"] and "overshoot" not in again.data["budget"]
    kept = build(spec, tmp_path, only=["gradients"])
    assert kept.data["budget"]["throughput"]["source"] == "stored"
    assert "the sections took" not in capsys.readouterr().err
