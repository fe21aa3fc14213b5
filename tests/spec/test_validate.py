"""Bad specs: each must exit 2 naming the file, the key path and the line, and write nothing."""
from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import pytest

from reportgen.cli import main
from tests.project import GOOD, make_project


class Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch pwned-marker",))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    make_project(tmp_path)
    return tmp_path


def run(spec: Path, capsys, command: str = "validate") -> tuple:
    code = main([command, str(spec)] + (["--quiet"] if command == "build" else []))
    err = capsys.readouterr().err
    return code, err


def expect_error(project: Path, capsys, text: str, key: str, line: int, *fragments: str) -> str:
    spec = project / "bad.yaml"
    spec.write_text(textwrap.dedent(text))
    code, err = run(spec, capsys, "build")
    assert code == 2, err
    assert "Traceback" not in err
    assert f"{spec}:{line}:" in err, err
    assert f" {key}:" in err, err
    for f in fragments:
        assert f in err, err
    assert not (project / "site").exists(), "a failed build must not write anything"
    return err


def test_good_spec_validates(project, capsys):
    code = main(["validate", str(project / "spec.yaml")])
    out = capsys.readouterr().out
    assert code == 0
    assert "1 checkpoint(s), 2 probe(s), 3 classes" in out


BAD_SPECS = [
    # (name, yaml, key path, line, fragments)
    ("unknown-top-key", GOOD + "titel: x\n", "titel", 11, ["did you mean 'title'"]),
    ("missing-title", GOOD.replace("title: tiny\n", ""), "title", None, ["is required"]),
    ("unknown-section", GOOD + "sections:\n  occlusoin: {}\n", "sections.occlusoin", 12,
     ["did you mean 'occlusion'"]),
    ("bad-cam-method", GOOD + "sections:\n  cam:\n    methods: [gradcam, gradcamm]\n",
     "sections.cam.methods[1]", 13, ["did you mean 'gradcam'"]),
    ("method-of-another-section", GOOD + "sections:\n  cam:\n    methods: [gradcam, saliency]\n",
     "sections.cam.methods[1]", 13, ["'saliency' is drawn by sections.gradients"]),
    ("bad-type", GOOD + "sections:\n  activations: {max_channels: many}\n",
     "sections.activations.max_channels", 12, ["expected 'auto' or a number of channels", "got 'many'"]),
    ("two-sources", GOOD.replace("  factory: tinynet:TinyNet\n",
                                 "  factory: tinynet:TinyNet\n  torchvision: resnet18\n"),
     "model.factory", 3, ["exactly one"]),
    ("unknown-torchvision", GOOD.replace("factory: tinynet:TinyNet", "torchvision: resnet19"),
     "model.torchvision", 3, ["did you mean 'resnet18'"]),
    ("factory-missing-module", GOOD.replace("tinynet:TinyNet", "nosuchmod:Net"),
     "model.factory", 3, ["nosuchmod"]),
    ("factory-missing-attr", GOOD.replace("tinynet:TinyNet", "tinynet:TinyNett"),
     "model.factory", 3, ["did you mean 'TinyNet'"]),
    ("checkpoint-glob-empty", GOOD.replace("ckpt/*.pt", "runs/*.pt"), "checkpoints[0]", 7, ["runs"]),
    ("checkpoint-shape-mismatch", GOOD.replace("num_classes: 3", "num_classes: 5")
     .replace("[cat, dog, bird]", "[a, b, c, d, e]"), "checkpoints[0]", 7, ["fc.weight", "[3, 4]", "[5, 4]"]),
    ("probe-glob-empty", GOOD.replace("probes/*.png", "nothing/*.png"), "probes.images[0]", 9, []),
    ("unknown-layer", GOOD + "sections:\n  filters: {layer: conv9}\n", "sections.filters.layer", 12,
     ["conv9", "conv1"]),
    ("unknown-target-class", GOOD.replace("  images: [probes/*.png]\n",
                                          "  images: [probes/*.png]\n  targets: horse\n"),
     "probes.targets", 10, ["horse"]),
    ("classes-length", GOOD.replace("[cat, dog, bird]", "[cat, dog]"), "classes", 10, ["2", "3"]),
    ("audit-label", GOOD + "audit_checkpoint: epoch 9\n", "audit_checkpoint", 11, ["epoch_1"]),
    ("input-size-length", GOOD.replace("[3, 16, 16]", "[16, 16]"), "model.input_size", 5,
     ["at least 3"]),
    ("mean-length", GOOD + "preprocess: {mean: [0.5, 0.5], std: [0.2, 0.2]}\n", "preprocess.mean", 11,
     ["2 values", "3 input channel"]),
    ("theme-missing", GOOD + "output: {theme: nope.css}\n", "output.theme", 11, ["nope.css"]),
    ("bad-device", GOOD + "device: tpu\n", "device", 11, ["'cpu'"]),
    ("duplicate-key", GOOD + "title: again\n", "title", 11, ["duplicate"]),
    ("metrics-missing", GOOD + "metrics: runs/metrics.csv\n", "metrics", 11, ["not found"]),
    ("bad-window", GOOD + "sections:\n  occlusion: {window: 0}\n", "sections.occlusion.window", 12,
     [">= 1"]),
    ("unknown-occlusion-target", GOOD + "sections:\n  occlusion:\n    target: [cat, hourse]\n",
     "sections.occlusion.target[1]", 13, ["unknown class 'hourse'"]),
    ("occlusion-targets-count", GOOD + "sections:\n  occlusion:\n    target: [cat, dog, bird]\n",
     "sections.occlusion.target", 13, ["3 targets", "2 probe"]),
    ("targets-count", GOOD.replace("  images: [probes/*.png]\n",
                                   "  images: [probes/*.png]\n  targets: [cat, dog, bird]\n"),
     "probes.targets", 10, ["3 targets", "2 probe"]),
    ("cam-layer-not-spatial", GOOD + "sections:\n  cam: {layer: fc}\n", "sections.cam.layer", 12,
     ["'fc'", "[1, 3]", "spatial"]),
    ("occlusion-window-too-large", GOOD + "sections:\n  occlusion: {window: 32, stride: 8}\n",
     "sections.occlusion.window", 12, ["32x32", "16x16"]),
    ("model-fails-on-input", GOOD.replace("[3, 16, 16]", "[2, 16, 16]")
     .replace("classes: [cat, dog, bird]", "classes: [cat, dog, bird]\npreprocess: {mean: [0, 0], std: [1, 1]}"),
     "model.input_size", 5, ["fails on an input"]),
]


@pytest.mark.parametrize("name,text,key,line,fragments", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_spec(project, capsys, name, text, key, line, fragments):
    if line is None:  # a missing key has no line of its own: the file is still named
        spec = project / "bad.yaml"
        spec.write_text(text)
        code, err = run(spec, capsys, "build")
        assert code == 2 and str(spec) in err and key in err
        for f in fragments:
            assert f in err
        return
    expect_error(project, capsys, text, key, line, *fragments)


def test_yaml_syntax_error_names_line(project, capsys):
    spec = project / "bad.yaml"
    spec.write_text("title: x\nmodel: [unclosed\nprobes: {}\n")
    code, err = run(spec, capsys)
    assert code == 2 and f"{spec}:" in err and "invalid YAML" in err
    assert ":3:" in err or ":2:" in err


def test_probe_that_is_not_an_image(project, capsys):
    (project / "probes" / "fake.png").write_text("this is not a png")
    code, err = run(project / "spec.yaml", capsys, "build")
    assert code == 2 and "probes.images[0]" in err and "fake.png" in err and ":9:" in err


def test_malicious_checkpoint_is_refused_and_never_runs(project, capsys, monkeypatch):
    monkeypatch.chdir(project)
    for old in (project / "ckpt").glob("*.pt"):
        old.unlink()
    with open(project / "ckpt" / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    code, err = run(project / "spec.yaml", capsys, "build")
    assert code == 2 and "checkpoints[0]" in err and "evil.pt" in err
    assert not (project / "pwned-marker").exists()


def test_missing_spec_file(tmp_path, capsys):
    code, err = run(tmp_path / "nope.yaml", capsys)
    assert code == 2 and "nope.yaml" in err and "not found" in err


def test_failed_build_keeps_previous_report(project, capsys):
    out = project / "site"
    assert main(["build", str(project / "spec.yaml"), "--quiet", "--only", "summary"]) == 0
    before = (out / "index.html").read_bytes()
    (project / "spec.yaml").write_text(GOOD + "device: tpu\n")
    assert main(["build", str(project / "spec.yaml"), "--quiet"]) == 2
    assert (out / "index.html").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "report.json"]


def test_default_occlusion_window_fits_a_small_input(project, capsys):
    """Only a window the user wrote can be too large; the default shrinks to the input."""
    spec = project / "small.yaml"
    spec.write_text(GOOD.replace("[3, 16, 16]", "[3, 8, 8]"))
    assert main(["validate", str(spec)]) == 0


def test_exponent_without_a_dot_is_a_number():
    """YAML 1.1 reads 1e-3 as a string; users mean a number (YAML 1.2 agrees). Quoted stays text."""
    from reportgen.spec.yamlload import parse_yaml

    data, _ = parse_yaml("a: 1e-3\nb: -5E+2\nc: '1e-3'\nd: 1.0e-3\ne: 1e\nf: [2e0]\n", "x.yaml")
    assert data == {"a": 0.001, "b": -500.0, "c": "1e-3", "d": 0.001, "e": "1e", "f": [2.0]}


def _alias_bomb() -> str:
    """A "billion laughs": nine levels of nine aliases each, 9**9 leaves from ~450 bytes."""
    rows = ["a0: &a0 [x,x,x,x,x,x,x,x,x]"]
    rows += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return "\n".join(rows) + "\n"


def test_alias_bomb_is_refused_at_once(tmp_path, capsys):
    """Aliases are refused where they stand, before anything walks the 9**9 leaves
    (validate was busy for minutes). The bound is a guard, not a benchmark."""
    import time

    spec = tmp_path / "bomb.yaml"
    spec.write_text(_alias_bomb())
    start = time.perf_counter()
    code = main(["validate", str(spec)])
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err
    assert code == 2 and f"{spec}:2: a1[0]:" in err and "YAML aliases (*name) are not supported" in err


@pytest.mark.parametrize("text, where", [
    ("a: &x 1\nb: *x\n", "x.yaml:2: b:"),
    ("a: &x 1\nb: [1, *x]\n", "x.yaml:2: b[1]:"),
    ("? *x\n: 1\n", "x.yaml:1:"),
])
def test_alias_is_refused_with_its_key_and_line(text, where):
    from reportgen.errors import SpecError
    from reportgen.spec.yamlload import parse_yaml

    with pytest.raises(SpecError, match="YAML aliases") as e:
        parse_yaml(text, "x.yaml")
    assert str(e.value).startswith(where)
