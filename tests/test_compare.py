"""reportgen compare: known answers on models derived from the trained demo.

* NEW = BASE: nothing changed, to the last digit;
* NEW = BASE with conv2's channels permuted (and conv3's inputs to match):
  the same function, large weight change, CKA 1, and the verdict says so;
* NEW = BASE with conv1 replaced by noise: conv1 moves most and its CKA drops
  most, a noisy-filters finding is new, and the new-warning gate trips;
* NEW = BASE with the classifier fine-tuned on one class's labels corrupted:
  the negative flips concentrate on that class, and the verdict names it;
* a different architecture: the compare builds, CKA as a layer x layer map,
  weights not applicable;
* different class counts: exit 2 naming both specs, nothing written.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import reportgen
from reportgen.cli import main
from tests.findings_series import checkpoints, make_variant

pytestmark = pytest.mark.slow
ONLY = ["summary", "filters"]
DATASET_LIMIT = 160          # of the demo's 400 held-out images: 40 per class, a fast compare pass


def _limit_dataset(spec: Path) -> Path:
    data = yaml.safe_load(spec.read_text())
    data["dataset"]["limit"] = DATASET_LIMIT
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    return spec


def _copy_demo(demo_dir: Path, dest: Path, title: str) -> Path:
    """A copy of the demo project (checkpoints, probes, dataset) whose spec has ``title``."""
    shutil.copytree(demo_dir, dest, ignore=shutil.ignore_patterns("site", "compare"))
    spec = dest / "spec.yaml"
    data = yaml.safe_load(spec.read_text())
    data["title"] = title
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    return _limit_dataset(spec)


def _edit_last(root: Path, change) -> None:
    path = checkpoints(root)[-1]
    ckpt = torch.load(path, weights_only=True)
    change(ckpt["model_state_dict"])
    torch.save(ckpt, path)


def _compare(base: Path, new: Path, out: Path, only=ONLY) -> dict:
    report = reportgen.compare(base, new, out_dir=out, only=only, cache_dir=out.parent / "cache")
    assert report.path == out / "index.html" and report.json_path.is_file()
    return report.data


@pytest.fixture(scope="module")
def base_spec(demo_dir, tmp_path_factory) -> Path:
    return _copy_demo(demo_dir, tmp_path_factory.mktemp("base") / "project", "demo BASE")


def test_new_equal_to_base_changes_nothing(base_spec, tmp_path, capsys):
    new = _copy_demo(base_spec.parent, tmp_path / "new", "demo NEW")
    data = _compare(base_spec, new, tmp_path / "out")
    assert data["kind"] == "compare" and data["base"]["title"] == "demo BASE" and data["new"]["title"] == "demo NEW"
    c = data["comparison"]
    assert c["same_architecture"] is True
    p = c["predictions"]
    assert p["n"] == 6 + DATASET_LIMIT and p["agreement"] == 1.0
    assert p["negative_flips"] == 0 and p["positive_flips"] == 0
    assert all(v["base_accuracy"] == v["new_accuracy"] for v in p["per_class"].values())
    ckas = [v["cka"] for v in c["layers"].values() if v["cka"] is not None]
    changes = [v["weight_change"] for v in c["layers"].values() if v["weight_change"] is not None]
    assert ckas and min(ckas) > 1 - 1e-4 and max(ckas) < 1 + 1e-4
    assert changes and max(changes) == 0.0
    assert {f["state"] for f in data["findings"]} <= {"unchanged"} and data["resolved"] == []
    assert data["verdict"][0].startswith("The function did not change")
    units = c["units"]                    # every channel of the shown layer kept its activations
    assert units["layer"] in ckas_layers(c) and len(units["channels"]) == 6
    assert min(v for v in units["correlation_per_channel"] if v is not None) > 1 - 1e-4
    assert all(r["base_top_images"] == r["new_top_images"] for r in units["channels"])
    assert c["training"]["base"]["metrics"] == c["training"]["new"]["metrics"] != []
    html = (tmp_path / "out" / "index.html").read_text()
    assert 'id="units"' in html and "Units that changed most" in html and "BASE and NEW read the same log" in html
    assert main(["compare", str(base_spec), str(new), "-o", str(tmp_path / "cli"), "--only", *ONLY,
                 "--quiet", "--fail-on", "new-warning"]) == 0


def ckas_layers(c: dict) -> list:
    return [k for k, v in c["layers"].items() if v["cka"] is not None]


def _permute_conv2(sd: dict) -> None:
    """Channels of conv2 (and bn2) in another order, conv3's inputs to match: the same function."""
    perm = torch.randperm(sd["features.conv2.weight"].shape[0], generator=torch.Generator().manual_seed(0))
    sd["features.conv2.weight"] = sd["features.conv2.weight"][perm].clone()
    for key in ("weight", "bias", "running_mean", "running_var"):
        sd[f"features.bn2.{key}"] = sd[f"features.bn2.{key}"][perm].clone()
    sd["features.conv3.weight"] = sd["features.conv3.weight"][:, perm].clone()


def test_permuted_channels_are_the_same_function(base_spec, tmp_path):
    new = _copy_demo(base_spec.parent, tmp_path / "new", "permuted")
    _edit_last(new.parent, _permute_conv2)
    data = _compare(base_spec, new, tmp_path / "out")
    c = data["comparison"]
    assert c["predictions"]["agreement"] == 1.0 and c["predictions"]["negative_flips"] == 0
    ckas = {k: v["cka"] for k, v in c["layers"].items() if v["cka"] is not None}
    assert min(ckas.values()) > 0.999, ckas
    assert c["layers"]["features.conv2"]["weight_change"] > 0.5
    assert c["layers"]["features.conv3"]["weight_change"] > 0.5
    assert c["layers"]["features.conv1"]["weight_change"] == 0.0
    assert data["verdict"][0].startswith("The function did not change")
    assert "features.conv" in data["verdict"][0]        # and it names what moved


def test_reinitialized_conv1_moves_most_and_raises_a_new_finding(demo_dir, base_spec, tmp_path, capsys):
    new = _limit_dataset(make_variant(demo_dir, tmp_path / "noisy", "noisy"))
    data = _compare(base_spec, new, tmp_path / "out")
    layers = data["comparison"]["layers"]
    changes = {k: v["weight_change"] for k, v in layers.items() if v["weight_change"] is not None}
    ckas = {k: v["cka"] for k, v in layers.items() if v["cka"] is not None}
    assert max(changes, key=changes.get) == "features.conv1"
    # the representation change starts in conv1's block: its ReLU is the first layer below "kept"
    # (conv1's own pre-BN output is a linear map of mostly low-frequency images: linear CKA stays
    # high for any filters there), and everything after it drops further
    order = list(ckas)
    first = next(k for k in order if ckas[k] < 0.95)
    assert first == "features.relu1", ckas
    assert all(ckas[k] < ckas["features.relu1"] for k in order[order.index("features.relu1") + 1:])
    assert any("change from features.relu1 on" in s for s in data["verdict"]), data["verdict"]
    noisy = [f for f in data["findings"] if f["id"] == "noisy-filters"]
    assert noisy and noisy[0]["state"] == "new"
    assert main(["compare", str(base_spec), str(new), "-o", str(tmp_path / "cli"), "--only", *ONLY,
                 "--quiet", "--fail-on", "new-warning"]) == 3
    assert "noisy" in capsys.readouterr().err


def _finetune_with_corrupted_class(root: Path, wrong: str, into: str) -> None:
    """The classifier trained on the dataset with class ``wrong`` labelled ``into``."""
    from reportgen.analyses.topk import ImageDataset
    from reportgen.demo.net import ShapesNet

    spec = yaml.safe_load((root / "spec.yaml").read_text())
    classes = (root / "classes.txt").read_text().split()
    items = [(p, p.parent.name) for p in sorted((root / "data" / "val").glob("*/*.png"))]
    data = ImageDataset(items, (3, 64, 64), mean=spec["preprocess"]["mean"], std=spec["preprocess"]["std"])
    x = torch.stack([data.load(i)[0] for i in range(len(items))])
    y = torch.tensor([classes.index(into if c == wrong else c) for _, c in items])
    path = checkpoints(root)[-1]
    ckpt = torch.load(path, weights_only=True)
    model = ShapesNet(num_classes=4)
    model.load_state_dict(ckpt["model_state_dict"])
    model.eval()
    with torch.no_grad():            # only the classifier trains: its inputs are fixed
        feats = torch.flatten(model.pool(model.features(x)), 1)
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.fc.parameters(), lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model.fc(feats), y).backward()
        opt.step()
    ckpt["model_state_dict"] = model.state_dict()
    torch.save(ckpt, path)


def test_corrupted_labels_concentrate_negative_flips_on_that_class(base_spec, tmp_path):
    new = _copy_demo(base_spec.parent, tmp_path / "new", "fine-tuned on corrupted squares")
    _finetune_with_corrupted_class(new.parent, "square", "triangle")
    data = _compare(base_spec, new, tmp_path / "out")
    p = data["comparison"]["predictions"]
    assert p["negative_flips"] >= 20
    by_class = data["flips_by_class"]
    assert max(by_class, key=by_class.get) == "square" and by_class["square"] >= 0.8 * p["negative_flips"]
    assert p["per_class"]["square"]["new_accuracy"] < p["per_class"]["square"]["base_accuracy"] - 0.2
    assert any("in class square" in s for s in data["verdict"]), data["verdict"]


OTHER_NET = '''
import torch
from torch import nn

class OtherNet(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(12, num_classes)

    def forward(self, x):
        return self.head(self.body(x).mean(dim=(2, 3)))
'''


def _other_spec(root: Path, classes: int = 4) -> Path:
    root.mkdir(parents=True)
    (root / "othernet.py").write_text(OTHER_NET)
    spec = root / "other.yaml"
    spec.write_text(f"title: other\nmodel:\n  factory: othernet:OtherNet\n  kwargs: {{num_classes: {classes}}}\n"
                    "  input_size: [3, 64, 64]\n")
    return spec


def test_different_architectures_get_a_cka_map_and_no_weights(base_spec, tmp_path):
    other = _other_spec(tmp_path / "other")
    data = _compare(other, base_spec, tmp_path / "out")
    c = data["comparison"]
    assert c["same_architecture"] is False and c["architecture_differences"]
    assert all(v["weight_change"] is None for v in c["layers"].values())
    matrix = c["cka"]["matrix"]
    assert len(matrix["values"]) == len(matrix["base_layers"]) and len(matrix["values"][0]) == len(matrix["new_layers"])
    html = (tmp_path / "out" / "index.html").read_text()
    assert "the architectures differ" in html and 'class="cka-matrix"' in html
    assert c["units"]["layer"] is None and "architectures differ" in c["units"]["skipped"]
    assert c["training"]["base"] is None and c["training"]["new"] is not None   # only the demo logs curves
    assert 0 <= c["predictions"]["agreement"] <= 1


def test_different_class_counts_exit_2_naming_both_specs(base_spec, tmp_path, capsys):
    other = _other_spec(tmp_path / "other", classes=3)
    out = tmp_path / "out"
    assert main(["compare", str(other), str(base_spec), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(other) in err and str(base_spec) in err and "3 classes" in err and "Traceback" not in err
    assert not out.exists()


def test_report_json_keys_follow_the_contract(base_spec, tmp_path):
    new = _copy_demo(base_spec.parent, tmp_path / "new", "again")
    data = json.loads(reportgen.compare(base_spec, new, out_dir=tmp_path / "o", only=["summary"],
                                        cache_dir=tmp_path / "c").json_path.read_text())
    for side in ("base", "new"):
        assert set(data[side]) >= {"title", "spec_digest", "model"}
    assert set(data["comparison"]["predictions"]) >= {"n", "agreement", "negative_flips", "positive_flips",
                                                      "per_class"}
    for v in data["comparison"]["layers"].values():
        assert set(v) >= {"cka", "weight_change"}
    for key in ("sections", "findings", "resolved", "timings"):
        assert key in data
    size = data["size"]                                   # as a build's: the page and each part's share
    assert size["bytes"] == (tmp_path / "o" / "index.html").stat().st_size
    assert {"verdict", "predictions", "findings"} <= set(size["sections"])
    assert 0 < sum(size["sections"].values()) < size["bytes"]
