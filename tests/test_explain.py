"""reportgen.explain: the SPEC.md contract (names, shapes, targets, outputs) and hygiene (hooks, memory)."""
from __future__ import annotations

import gc
import importlib.machinery
import io
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

import reportgen
from reportgen.analyses import explain as explain_mod
from reportgen.errors import MethodNotApplicable, NotApplicable
from reportgen.model.hooks import count_hooks

CAM_METHODS = ["cam", "gradcam", "gradcampp", "scorecam", "eigencam"]
INPUT_METHODS = ["saliency", "deconvnet", "guided_backprop", "integrated_gradients", "smoothgrad"]
FAST = {"integrated_gradients": {"steps": 4}, "smoothgrad": {"samples": 2}}


@pytest.mark.parametrize("method", CAM_METHODS + INPUT_METHODS)
@pytest.mark.parametrize("c,h,w", [(1, 12, 20), (3, 8, 8)])
def test_shapes_dtype_and_range(make_cnn, make_images, method, c, h, w):
    model, x = make_cnn(in_ch=c), make_images(n=2, c=c, h=h, w=w)
    out = reportgen.explain(model, x, method, **FAST.get(method, {}))
    assert out.dtype == np.float32 and np.isfinite(out).all()
    if method in CAM_METHODS:
        assert out.shape == (2, h, w)
        assert out.min() >= 0 and out.max() <= 1
    else:
        assert out.shape == (2, c, h, w)


def test_public_names_stay_callable_after_importing_every_submodule(make_cnn, make_images):
    import reportgen.analyses.explain
    import reportgen.commands.build  # noqa: F401

    model, x = make_cnn(), make_images(n=1)
    assert callable(reportgen.build) and callable(reportgen.receptive_field)
    np.testing.assert_array_equal(reportgen.explain(model, x, "gradcam"),
                                  reportgen.analyses.explain.explain(model, x, "gradcam"))


def test_unknown_method_lists_the_choices(make_cnn, make_images):
    with pytest.raises(ValueError) as err:
        reportgen.explain(make_cnn(), make_images(n=1), "gradcamm")
    msg = str(err.value)
    assert "'gradcamm'" in msg
    for name in CAM_METHODS + INPUT_METHODS:
        assert name in msg


def test_sections_take_their_method_choices_from_the_registry():
    """One registry: what cam and gradients accept is what reportgen.explain runs, by section."""
    from reportgen.analyses.explain import drawn_by, methods
    from reportgen.sections.attribution import CamSection, GradientsSection

    assert methods("cam") == CAM_METHODS and methods("gradients") == INPUT_METHODS
    for section, cls in (("cam", CamSection), ("gradients", GradientsSection)):
        assert cls.options["methods"].item.choices == methods(section)
        assert all(drawn_by(m) == section for m in methods(section))
    assert set(methods()) >= set(methods("cam") + methods("gradients"))


def test_unknown_layer_lists_the_choices(make_cnn, make_images):
    with pytest.raises(ValueError, match=r"unknown layer 'conv3'.*did you mean.*'conv2'.*Valid layers: conv1"):
        reportgen.explain(make_cnn(), make_images(n=1), "gradcam", layer="conv3")


def test_unknown_parameter_and_misplaced_layer_are_clear(make_cnn, make_images):
    model, x = make_cnn(), make_images(n=1)
    with pytest.raises(ValueError, match=r"unknown parameter 'step'.*'integrated_gradients'.*steps"):
        reportgen.explain(model, x, "integrated_gradients", step=3)
    with pytest.raises(ValueError, match=r"takes no layer.*gradcam"):
        reportgen.explain(model, x, "saliency", layer="conv1")


def test_targets(make_cnn, make_images):
    model, x = make_cnn(), make_images(n=3)
    with torch.no_grad():
        predicted = model(x).argmax(1).tolist()
    by_none = reportgen.explain(model, x, "gradcam")
    np.testing.assert_array_equal(by_none, reportgen.explain(model, x, "gradcam", target=predicted))
    np.testing.assert_array_equal(reportgen.explain(model, x, "saliency", target=2),
                                  reportgen.explain(model, x, "saliency", target=[2, 2, 2]))
    np.testing.assert_array_equal(reportgen.explain(model, x, "saliency", target=np.array([0, 1, 2])),
                                  reportgen.explain(model, x, "saliency", target=[0, 1, 2]))
    for bad, msg in [(4, r"target 4 is out of range.*4 classes.*0\.\.3"), (-1, "out of range"),
                     ([0, 1], "2 entries but there are 3 images"), ([0, 1.5, 2], "ints"),
                     ("cat", "int")]:
        for method in ("gradcam", "saliency", "integrated_gradients"):
            with pytest.raises(ValueError, match=msg):
                reportgen.explain(model, x, method, target=bad)


class _TupleOut(nn.Module):
    def __init__(self, net, kind):
        super().__init__()
        self.net, self.kind = net, kind

    def forward(self, x):
        y = self.net(x)
        if self.kind == "tuple":
            return y * 0, y          # class scores at index 1
        return {"features": x.mean(), "scores": y}


@pytest.mark.parametrize("kind,key", [("tuple", 1), ("dict", "scores")])
@pytest.mark.parametrize("method", ["gradcam", "saliency"])
def test_output_selects_the_class_scores(make_cnn, make_images, kind, key, method):
    x = make_images(n=2)
    plain = reportgen.explain(make_cnn(), x, method, target=[1, 2], **FAST.get(method, {}))
    wrapped = _TupleOut(make_cnn(), kind)
    layer = "net.relu2" if method in CAM_METHODS else None
    got = reportgen.explain(wrapped, x, method, target=[1, 2], layer=layer, output=key, **FAST.get(method, {}))
    np.testing.assert_allclose(got, plain, rtol=1e-6, atol=1e-9)
    if kind == "dict":
        with pytest.raises(ValueError, match="model.output"):
            reportgen.explain(wrapped, x, method, layer=layer)


@pytest.mark.parametrize("method", ["gradcam", "integrated_gradients", "guided_backprop"])
def test_works_inside_no_grad_and_inference_mode(make_cnn, make_images, method):
    model, x = make_cnn(), make_images(n=2)
    expected = reportgen.explain(model, x, method, **FAST.get(method, {}))
    with torch.no_grad():
        np.testing.assert_array_equal(reportgen.explain(model, x, method, **FAST.get(method, {})), expected)
    with torch.inference_mode():
        xi = x.clone()
        np.testing.assert_array_equal(reportgen.explain(model, xi, method, **FAST.get(method, {})), expected)


def test_train_mode_is_restored_and_not_used(make_cnn, make_images):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x = make_images(n=2, h=8, w=8)
    expected = reportgen.explain(model.eval(), x, "gradcam")
    model.train()
    model[3].eval()                      # a mixed state must come back as it was
    got = reportgen.explain(model, x, "gradcam")
    np.testing.assert_array_equal(got, expected)
    assert [m.training for m in model] == [True, True, True, False, True, True, True]


@pytest.mark.parametrize("method", CAM_METHODS + INPUT_METHODS)
def test_no_hook_left_after_a_method_raises(make_cnn, make_images, method):
    model, x = make_cnn(), make_images(n=2)
    model.train()
    with pytest.raises(ValueError):
        reportgen.explain(model, x, method, target=[0, 9], **FAST.get(method, {}))
    assert count_hooks(model) == 0
    assert all(m.training for m in model.modules())
    assert torch._C._len_torch_function_stack() == 0


def test_no_hook_left_after_a_bad_reshape(make_cnn, make_images):
    model, x = make_cnn(), make_images(n=1)

    def boom(t):
        raise RuntimeError("bad reshape")

    with pytest.raises(RuntimeError, match="bad reshape"):
        reportgen.explain(model, x, "gradcam", layer="conv2", reshape=boom)
    assert count_hooks(model) == 0


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if torch.is_tensor(o))


@pytest.mark.parametrize("method", ["gradcampp", pytest.param("guided_backprop", marks=pytest.mark.slow)])
def test_memory_is_flat_over_100_calls(make_cnn, make_images, method):
    # hooks, closures, captured activations or autograd graphs kept alive by
    # mistake would show up as a growing number of live tensors
    model, x = make_cnn(), make_images(n=1, h=8, w=8)
    layer = "conv2" if method in ("gradcampp",) else None
    for _ in range(3):
        reportgen.explain(model, x, method, layer=layer)
    before = _live_tensors()
    for _ in range(100):
        reportgen.explain(model, x, method, layer=layer)
    assert _live_tensors() <= before


def test_occlusion_defaults_to_the_exact_incremental_engine_where_it_saves_work():
    import inspect

    from reportgen.analyses import occlusion as occ

    for fn in (occ.occlusion, occ.occlusion_details):
        params = inspect.signature(fn).parameters
        assert params["incremental"].default == "auto" and params["batch_size"].default == "auto"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 5)).eval()
    x = torch.randn(2, 3, 24, 20)
    assert occ.occlusion_cost(model, x, window=6, stride=4).auto == "incremental"
    got = reportgen.explain(model, x, "occlusion", window=6, stride=4)
    plain = occ.occlusion(model, x, window=6, stride=4, incremental=False)
    incremental = occ.occlusion(model, x, window=6, stride=4, incremental=True)
    np.testing.assert_allclose(got, plain, atol=1e-5)
    np.testing.assert_allclose(got, incremental, atol=1e-7)
    assert np.abs(got).max() > 1e-4


def test_occlusion_is_dispatched_lazily(make_cnn, make_images, monkeypatch):
    # stands in for reportgen.analyses.occlusion until that module lands
    calls = {}

    def occlusion(model, images, target, window=8, stride=4, baseline=0.0, output_key=None):
        calls.update(target=target, window=window, stride=stride, baseline=baseline, output_key=output_key)
        return np.zeros((images.shape[0],) + tuple(images.shape[2:]), dtype=np.float32), {"meta": 1}

    fake = types.ModuleType("reportgen.analyses.occlusion")
    fake.__spec__ = importlib.machinery.ModuleSpec(fake.__name__, None)
    fake.occlusion = occlusion
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    monkeypatch.setattr(explain_mod, "_METHODS", dict(explain_mod._METHODS))
    monkeypatch.delitem(explain_mod._METHODS, "occlusion", raising=False)
    model, x = make_cnn(), make_images(n=2)
    out = reportgen.explain(model, x, "occlusion", target=[1, 0], window=4, stride=2, output=0)
    assert out.shape == (2, 16, 12) and out.dtype == np.float32
    assert calls == {"target": [1, 0], "window": 4, "stride": 2, "baseline": 0.0, "output_key": 0}
    assert "occlusion" in explain_mod.methods()
    with pytest.raises(ValueError, match="takes no layer"):
        reportgen.explain(model, x, "occlusion", layer="conv1")
    with pytest.raises(ValueError, match="unknown parameter 'windw'.*baseline, stride, window"):
        reportgen.explain(model, x, "occlusion", windw=4)


def test_register_method_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        explain_mod.register_method("gradcam", lambda *a, **k: None)


def test_bad_images_are_refused(make_cnn):
    model = make_cnn()
    for bad in (torch.zeros(3, 8, 8), torch.zeros(1, 3, 8, 8, dtype=torch.uint8), np.zeros((1, 3, 8, 8))):
        with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
            reportgen.explain(model, bad, "saliency")


class _Tokens(nn.Module):
    """(N, C, H, W) -> (N, C, H*W): a token sequence, as in a ViT block."""

    def forward(self, x):
        return x.flatten(2)


def _scripted(model, x):
    """The model as a `torchscript:` spec loads it: saved, then loaded (no hooks at all)."""
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.trace(model, x), buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


def _not_applicable_cases(make_cnn, make_images):
    x = make_images(n=2, h=8, w=8)
    torch.manual_seed(0)
    flat_head = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 8 * 8, 3))
    gelu = nn.Sequential(nn.Conv2d(3, 2, 3), nn.GELU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()
    tokens = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _Tokens(), nn.Linear(64, 2), nn.Flatten(),
                           nn.Linear(8, 3)).eval()
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3)).eval()
    scripted = _scripted(make_cnn(), x)
    return x, [(flat_head, "cam", {}, "global-average-pool"),
               (gelu, "guided_backprop", {}, "does not apply"),
               (gelu, "deconvnet", {}, "does not apply"),
               (tokens, "gradcam", {"layer": "1"}, "reshape"),
               (mlp, "gradcam", {}, "no layer of the model has a spatial"),
               (scripted, "gradcam", {}, "TorchScript"),
               (scripted, "eigencam", {"layer": "relu2"}, "TorchScript"),
               (scripted, "guided_backprop", {}, "TorchScript")]


def test_a_method_that_does_not_apply_says_so_with_method_not_applicable(make_cnn, make_images):
    """The report's sections turn MethodNotApplicable (and only it) into a note; it is still a ValueError."""
    assert issubclass(MethodNotApplicable, ValueError) and issubclass(MethodNotApplicable, NotApplicable)
    x, cases = _not_applicable_cases(make_cnn, make_images)
    for model, method, kw, msg in cases:
        with pytest.raises(MethodNotApplicable, match=msg):
            reportgen.explain(model, x, method, **kw)


def test_bad_arguments_are_plain_value_errors_not_refusals(make_cnn, make_images):
    model, x = make_cnn(), make_images(n=2)
    calls = [lambda: reportgen.explain(model, x, "gradcamm"),
             lambda: reportgen.explain(model, x, "gradcam", layer="conv3"),
             lambda: reportgen.explain(model, x, "saliency", target=[0, 9]),
             lambda: reportgen.explain(model, x, "integrated_gradients", steps=0),
             lambda: reportgen.explain(model, x, "gradcam", layer="conv2", reshape=lambda t: t[:, 0])]
    for call in calls:
        with pytest.raises(ValueError) as err:
            call()
        assert not isinstance(err.value, NotApplicable), err.value
