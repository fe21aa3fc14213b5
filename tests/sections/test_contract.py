"""The section contract: options declared once, and everything else derived from them."""
from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest
import torch

import reportgen
from reportgen.commands import docs
from reportgen.errors import NotApplicable, SpecError
from reportgen.options import LayerName, Mapping, layer_option
from reportgen.sections import base
from reportgen.sections.registry import findings_options, registry
from reportgen.spec import load_spec
from tests.project import GOOD, make_project

README = Path(__file__).resolve().parents[2] / "docs" / "spec.md"   # the generated option tables live there


def test_readme_option_tables_match_the_registry():
    block = docs.readme_block(README.read_text(encoding="utf-8"))
    assert block is not None, "docs/spec.md lost its generated options block"
    assert block == docs.options_markdown(), "run: python -m reportgen.commands.docs --write docs/spec.md"


def test_readme_block_check_can_fail():
    text = README.read_text(encoding="utf-8")
    stale = docs.with_block(text, docs.options_markdown().replace("| 5 |", "| 6 |", 1))
    assert docs.readme_block(stale) != docs.options_markdown()


def test_every_declared_default_is_what_a_section_receives():
    """A section built without options gets exactly the declared defaults, and so does a spec."""
    spec = load_spec({"title": "t", "model": {"torchvision": "resnet18"}})
    for name, cls in registry().items():
        expected = {k: (opt.default if not isinstance(opt, Mapping) else {}) for k, opt in cls.options.items()}
        assert cls({}).options == expected, name
        assert spec["sections"][name] == expected, name
    assert spec["findings"] == {k: opt.default for k, opt in findings_options().items()}


def test_sections_state_no_second_default():
    """No section module keeps a DEFAULTS/THRESHOLDS table or reads options with a fallback."""
    for cls in registry().values():
        module = inspect.getmodule(cls)
        source = inspect.getsource(module)
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    assert not (isinstance(target, ast.Name) and target.id in ("DEFAULTS", "THRESHOLDS")), \
                        f"{module.__name__} keeps its own {target.id}"
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("options", "opts")
                    and len(node.args) == 2):
                pytest.fail(f"{module.__name__}:{node.lineno} reads an option with its own fallback default")


def test_spatial_layer_options_are_declared_on_the_sections():
    spatial = {(name, key) for name, cls in registry().items() for key, opt in cls.options.items()
               if isinstance(layer_option(opt), LayerName) and layer_option(opt).spatial}
    assert {("cam", "layer"), ("activations", "layers"), ("topk", "layers"), ("featureviz", "layers"),
            ("evolution", "activations_layer")} <= spatial
    assert ("filters", "layer") not in spatial


def test_results_are_frozen_dataclasses():
    for name in ("summary", "filters", "topk", "embeddings", "featureviz", "evolution", "curves"):
        module = inspect.getmodule(registry()[name])
        hint = inspect.signature(registry()[name].analyze).return_annotation
        cls = getattr(module, hint) if isinstance(hint, str) else hint
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, name


def test_requirements_raise_not_applicable_with_a_hint():
    section = registry()["topk"]({})
    ctx = base.BuildContext(model=torch.nn.Linear(1, 1), device=torch.device("cpu"), input_size=(3, 8, 8),
                            probes=[], classes=["a"], checkpoints=[], spec={"findings": {}}, dataset=[])
    with pytest.raises(NotApplicable) as e:
        section.check_applicable(ctx)
    assert e.value.reason == "no dataset in the spec" and "dataset:" in e.value.hint
    with pytest.raises(NotApplicable, match="needs at least two checkpoints; the spec gives 0"):
        registry()["evolution"]({}).check_applicable(ctx)
    registry()["summary"]({}).check_applicable(ctx)   # requires nothing


def test_threshold_accessor_reads_the_spec_then_the_declaration():
    ctx = base.BuildContext(model=torch.nn.Linear(1, 1), device=torch.device("cpu"), input_size=(3, 8, 8),
                            probes=[], classes=["a"], checkpoints=[], spec={"findings": {"border_band": 0.2}})
    assert ctx.threshold("border_band") == 0.2
    assert ctx.threshold("noisy_filter_fraction") == findings_options()["noisy_filter_fraction"].default
    with pytest.raises(KeyError):
        ctx.threshold("no_such_threshold")


def test_only_lists_the_registered_sections(tmp_path):
    spec = make_project(tmp_path)
    with pytest.raises(SpecError) as e:
        reportgen.build(spec, only=["occlusoin"], cache_dir=tmp_path / "c")
    assert "did you mean 'occlusion'" in str(e.value)
    for name in registry():
        assert name in str(e.value)


# --------------------------------------------------------------------------- defects

def test_dict_spec_with_too_large_window_is_a_spec_error(tmp_path, monkeypatch):
    """A dict has no line map; a window the caller wrote is still checked, not shrunk."""
    make_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    spec = {"title": "t", "model": {"factory": "tinynet:TinyNet", "kwargs": {"num_classes": 3},
                                    "input_size": [3, 16, 16]},
            "probes": {"images": ["probes/*.png"]}, "sections": {"occlusion": {"window": 32}}}
    with pytest.raises(SpecError) as e:
        reportgen.build(spec, out_dir=tmp_path / "out", cache_dir=tmp_path / "c")
    assert e.value.key == "sections.occlusion.window" and "larger than the model's input" in str(e.value)
    assert not (tmp_path / "out").exists()
    # the default window on the same small input still shrinks to fit
    del spec["sections"]
    reportgen.build(spec, out_dir=tmp_path / "out", only=["occlusion"], cache_dir=tmp_path / "c")


def test_named_layer_with_1x1_output_is_refused(tmp_path, capsys):
    from reportgen.cli import main

    text = GOOD + "sections:\n  cam:\n    layer: pool\n"
    spec = make_project(tmp_path, text)
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "sections.cam.layer" in err and "1x1" in err and f"{spec}:13" in err


def test_build_leaves_the_callers_random_streams_alone(tmp_path):
    import numpy as np

    spec = make_project(tmp_path)
    torch.manual_seed(123)
    np.random.seed(7)
    want_torch, want_np = torch.rand(3), np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(7)
    reportgen.build(spec, only=["summary", "occlusion"], cache_dir=tmp_path / "c")
    assert torch.equal(torch.rand(3), want_torch)
    assert np.array_equal(np.random.rand(3), want_np)
