"""Attribution evaluation: methods run over probes, scored, sanity-checked; failures classified.

Methods here are small callables on the tiny seeded CNN of conftest, most of
them maps built by hand (a border frame, a centre block) so the border
shares and the error handling can be checked without trusting any method.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from reportgen.analyses import attribution_eval as ae
from reportgen.analyses import faithfulness as fa
from reportgen.analyses.explain import explain
from reportgen.analyses.summary import summarize
from reportgen.errors import MethodNotApplicable, NotApplicable

H = W = 8


def saliency(model, images, targets):
    raw = explain(model, images, "saliency", target=targets)
    return np.abs(raw).sum(axis=1), raw, {"targets": list(targets)}


def frame(model, images, targets):
    """All the mass on the outer ring of pixels."""
    maps = np.zeros((images.shape[0], H, W), np.float32)
    maps[:, [0, -1], :] = 1
    maps[:, :, [0, -1]] = 1
    return maps, None, {}


def centre(model, images, targets):
    maps = np.zeros((images.shape[0], H, W), np.float32)
    maps[:, 3:5, 3:5] = 1
    return maps, None, {}


def image_edges(model, images, targets):
    """Maps of the image alone, blind to the weights: what the randomization check must catch."""
    x = images.detach().abs().sum(1).numpy()
    return np.abs(np.diff(x, axis=-1, append=x[..., -1:])) + 1e-3, None, {}


def refuses(model, images, targets):
    raise MethodNotApplicable("needs a head this model does not have")


def crashes(model, images, targets):
    raise ValueError("operands could not be broadcast together")


@pytest.fixture
def setup(make_cnn, make_images):
    return make_cnn(classes=3), make_images(n=2, h=H, w=W)


# --------------------------------------------------------------------------- one method

def test_run_method_keeps_maps_raw_and_extras(setup):
    model, x = setup
    m = ae.run_method("saliency", saliency, model, x, np.array([0, 2]))
    assert m.ok and not m.bug and m.error is None
    assert m.maps.shape == (2, H, W) and m.raw.shape == (2, 3, H, W)
    assert m.extras == {"targets": [0, 2]} and all(type(t) is int for t in m.extras["targets"])


def test_not_applicable_is_a_note_anything_else_a_bug(setup):
    model, x = setup
    note = ae.run_method("cam", refuses, model, x, [0, 1])
    assert not note.ok and not note.bug and note.error == "needs a head this model does not have"

    def plain_not_applicable(model, images, targets):
        raise NotApplicable("TorchScript allows no hooks")
    assert not ae.run_method("x", plain_not_applicable, model, x, [0, 1]).bug

    bug = ae.run_method("saliency", crashes, model, x, [0, 1])      # a ValueError is not a refusal
    assert not bug.ok and bug.bug and bug.error == "ValueError: operands could not be broadcast together"

    def runtime(model, images, targets):
        raise RuntimeError("CUDA error: device-side assert")
    assert ae.run_method("x", runtime, model, x, [0, 1]).bug


# --------------------------------------------------------------------------- evaluate

def test_targets_given_or_predicted(setup):
    model, x = setup
    res = ae.evaluate(model, x, {"frame": frame}, targets=[None, 1], steps=2)
    predicted = ae.probabilities(model, x).argmax(axis=1)
    assert res.targets.tolist() == [int(predicted[0]), 1]
    assert res.target_from_spec == [False, True]
    np.testing.assert_allclose(res.probs.sum(axis=1), 1.0, rtol=1e-6)
    assert res.probs.dtype == np.float32 and res.image_size == (H, W)
    assert res.probe_names == ["0", "1"]


def test_scores_are_faithfulness_per_probe_and_the_reference_is_seeded(setup):
    model, x = setup
    res = ae.evaluate(model, x, {"saliency": saliency}, targets=[0, 2], steps=4, seed=7)
    m = res.methods["saliency"]
    assert m.deletion_curves.shape == m.insertion_curves.shape == (2, 5)
    for i, t in enumerate([0, 2]):
        one = fa.deletion_insertion(model, x[i:i + 1], m.maps[i], t, steps=4)
        assert m.deletion_auc[i] == one["deletion_auc"] and m.insertion_auc[i] == one["insertion_auc"]
        ref = fa.deletion_insertion(model, x[i:i + 1], fa.random_saliency((H, W), 7 + i), t, steps=4)
        assert res.random_deletion_auc[i] == ref["deletion_auc"]
        assert res.random_insertion_auc[i] == ref["insertion_auc"]
    assert (res.steps, res.steps_auto) == (4, False)
    assert res.deletion_baseline == "zero (input space)" and res.insertion_baseline.startswith("blur")


def test_border_share_by_hand(setup):
    model, x = setup
    res = ae.evaluate(model, x, {"frame": frame, "centre": centre}, targets=[0, 1], steps=1,
                      border_frac=0.125)                                # a 1-pixel band at 8 px
    assert res.methods["frame"].border_share.tolist() == [1.0, 1.0]
    assert res.methods["centre"].border_share.tolist() == [0.0, 0.0]
    assert res.border_frac == 0.125 and res.border_area_share == pytest.approx(28 / 64)


def test_a_failing_method_leaves_the_others_scored(setup):
    model, x = setup
    res = ae.evaluate(model, x, {"cam": refuses, "broken": crashes, "frame": frame}, targets=[0, 1], steps=2,
                      sanity_threshold=0.5)
    assert list(res.methods) == ["cam", "broken", "frame"]
    assert res.methods["cam"].deletion_auc is None and res.methods["cam"].sanity is None
    assert res.methods["broken"].bug and res.methods["frame"].deletion_auc.shape == (2,)


def test_auto_steps_from_the_models_cost(setup, monkeypatch):
    model, x = setup
    assert ae.auto_steps(model, x[:1], n_probes=2, n_maps=3) == 32           # a tiny model: the most
    macs = summarize(model, x[:1]).total_macs
    # a budget for 11.5 passes per curve (2 probes x 3 maps x 2 curves): 11 passes, 10 steps
    monkeypatch.setattr(ae, "FAITHFULNESS_MAC_BUDGET", macs * 2 * 3 * 2 * 11.5)
    assert ae.auto_steps(model, x[:1], n_probes=2, n_maps=3) == 10
    monkeypatch.setattr(ae, "FAITHFULNESS_MAC_BUDGET", 1.0)                 # never below the floor
    assert ae.auto_steps(model, x[:1], n_probes=2, n_maps=3) == 8
    res = ae.evaluate(model, x, {"frame": frame, "cam": refuses}, targets=[0, 1])
    assert (res.steps, res.steps_auto) == (8, True)


def test_top_classes(setup):
    model, x = setup
    res = ae.evaluate(model, x, {"saliency": saliency}, targets=[0, 1], steps=1, top_classes=2)
    order = np.argsort(-res.probs, axis=1, kind="stable")
    np.testing.assert_array_equal(res.topk_classes, order[:, :2])
    m = res.methods["saliency"]
    assert m.topk.shape == (2, 2, H, W)
    for r in range(2):
        np.testing.assert_array_equal(m.topk[:, r], saliency(model, x, order[:, r].tolist())[0])
    assert ae.evaluate(model, x, {"saliency": saliency}, targets=[0, 1], steps=1).topk_classes is None
    many = ae.evaluate(model, x, {"frame": frame}, targets=[0, 1], steps=1, top_classes=10)
    assert many.topk_classes.shape == (2, 3)                               # no more than the classes


def test_top_classes_failure_keeps_the_main_maps(setup):
    model, x = setup

    def only_class_0(model, images, targets):
        if any(t != 0 for t in targets):
            raise RuntimeError("class not supported")
        return frame(model, images, targets)

    res = ae.evaluate(model, x, {"m": only_class_0}, targets=[0, 0], steps=1, top_classes=3)
    m = res.methods["m"]
    assert m.ok and m.topk is None and m.extras == {"topk_error": "RuntimeError: class not supported"}


def test_sanity_check(setup):
    model, x = setup
    res = ae.evaluate(model, x, {"edges": image_edges, "saliency": saliency}, targets=[0, 1], steps=1,
                      sanity_threshold=0.5, seed=3)
    assert res.sanity_threshold == 0.5 and res.sanity_randomized == "all parameters re-initialized (seed 3)"
    edges = res.methods["edges"].sanity
    assert edges.mean_spearman == pytest.approx(1.0) and not edges.passed       # blind to the weights
    sal = res.methods["saliency"].sanity
    expected = fa.sanity_randomization(model, x, lambda m, xx, t: saliency(m, xx, t)[0], [int(t) for t in
                                       res.targets], randomized=fa.randomize_weights(model, 3), threshold=0.5)
    np.testing.assert_array_equal(sal.spearman, expected.spearman)
    off = ae.evaluate(model, x, {"edges": image_edges}, targets=[0, 1], steps=1)
    assert off.sanity_threshold is None and off.methods["edges"].sanity is None


def test_sanity_failure_of_one_method_is_kept_on_it(setup):
    model, x = setup
    trained = [p.detach().clone() for p in model.parameters()]

    def trained_only(m, images, targets):
        if any(not torch.equal(p, q) for p, q in zip(m.parameters(), trained)):
            raise RuntimeError("the random head produced NaN")
        return frame(m, images, targets)

    # seed 5: seed 0 would redraw exactly the untrained model's initialization (made with seed 0)
    res = ae.evaluate(model, x, {"t": trained_only, "frame": frame}, targets=[0, 1], steps=1,
                      sanity_threshold=0.5, seed=5)
    assert res.methods["t"].sanity is None
    assert res.methods["t"].sanity_error == "RuntimeError: the random head produced NaN"
    assert res.methods["frame"].sanity is not None and res.sanity_error is None


def test_results_are_frozen_and_the_model_untouched(setup):
    model, x = setup
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = ae.evaluate(model, x, {"saliency": saliency}, targets=[0, 1], steps=2, top_classes=2,
                      sanity_threshold=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.steps = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.methods["saliency"].maps = None
    assert all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_deterministic(setup):
    model, x = setup
    a = ae.evaluate(model, x, {"saliency": saliency}, targets=[0, 1], steps=3, sanity_threshold=0.5)
    b = ae.evaluate(model, x, {"saliency": saliency}, targets=[0, 1], steps=3, sanity_threshold=0.5)
    np.testing.assert_array_equal(a.methods["saliency"].deletion_curves, b.methods["saliency"].deletion_curves)
    np.testing.assert_array_equal(a.random_insertion_auc, b.random_insertion_auc)
    np.testing.assert_array_equal(a.methods["saliency"].sanity.spearman, b.methods["saliency"].sanity.spearman)
