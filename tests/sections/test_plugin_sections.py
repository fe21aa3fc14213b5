"""Third-party sections: the example plugin (example_configs/plugin_section), pip-installed for real.

It is found through its entry point, its options and threshold are validated
like the built-in ones, its layers are checked against the model, --only knows
it, its partial renders and its findings reach report.json. Every test leaves
the registry as it found it (tests/plugins.py).
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from reportgen.cli import main
from reportgen.commands import docs
from reportgen.errors import NotApplicable
from reportgen.sections import base
from reportgen.sections.registry import PluginError, findings_options, load_plugins, registry
from reportgen.spec import load_spec
from tests.plugins import install_plugin, isolated_registry, plugin_on_path
from tests.project import GOOD, make_project


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The example plugin pip-installed into a folder of its own, once for this module."""
    return install_plugin(tmp_path_factory.mktemp("plugin"))


@pytest.fixture
def weightstats(installed):
    with plugin_on_path(installed):
        yield registry()["weightstats"]


def _spec(tmp_path: Path, extra: str) -> Path:
    return make_project(tmp_path, GOOD + extra)


def _context(model: nn.Module) -> base.BuildContext:
    return base.BuildContext(model=model, device=torch.device("cpu"), input_size=(3, 8, 8), probes=[],
                             classes=["a"], checkpoints=[], spec={"findings": {}})


# --------------------------------------------------------------------------- found and declared

def test_installed_plugin_is_registered_with_its_options_and_threshold(weightstats, installed):
    assert Path(sys.modules[weightstats.__module__].__file__).is_relative_to(installed)
    assert (weightstats.template_dir / weightstats.partial).is_file()   # shipped as package data
    spec = load_spec({"title": "t", "model": {"torchvision": "resnet18"}})
    assert spec["sections"]["weightstats"] == {"layers": "auto", "eps": 0.001}
    assert spec["findings"]["sparse_layer_fraction"] == 0.5
    assert findings_options()["sparse_layer_fraction"] is weightstats.thresholds["sparse_layer_fraction"]
    assert "| `sections.weightstats.eps` | 0.001 |" in docs.options_markdown()


def test_registration_is_undone_afterwards(installed):
    with plugin_on_path(installed):
        assert "weightstats" in registry()
    assert "weightstats" not in registry()
    assert "sparse_layer_fraction" not in findings_options()
    assert str(installed) not in sys.path and "reportgen_weightstats" not in sys.modules
    assert "weightstats" not in docs.options_markdown()   # the README table check sees built-ins only


# --------------------------------------------------------------------------- validated like built-ins

@pytest.mark.parametrize("value, message", [
    ("-1", "must be >= 0, got -1"),
    ('"1e-3"', "expected a number, got a string"),     # quoted: the user asked for a string
])
def test_bad_option_value_fails_validation_with_key_and_line(weightstats, tmp_path, capsys, value, message):
    spec = _spec(tmp_path, f"sections:\n  weightstats:\n    eps: {value}\n")
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert f"{spec}:13: sections.weightstats.eps: {message}" in err
    assert "Traceback" not in err


def test_unknown_option_and_section_suggest_the_closest(weightstats, tmp_path, capsys):
    spec = _spec(tmp_path, "sections:\n  weightstats:\n    epss: 0.01\n")
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert f"{spec}:13: sections.weightstats.epss: unknown key 'epss' (did you mean 'eps'?)" in err
    spec.write_text(GOOD + "sections:\n  weightstat: {eps: 0.01}\n")
    assert main(["validate", str(spec)]) == 2
    assert "sections.weightstat: unknown section 'weightstat' (did you mean 'weightstats'?)" \
        in capsys.readouterr().err


def test_named_layers_are_checked_against_the_model(weightstats, tmp_path, capsys):
    spec = _spec(tmp_path, "sections:\n  weightstats:\n    layers: [conv1, fc9]\n")
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "sections.weightstats.layers[1]" in err and "unknown layer 'fc9'" in err


def test_its_threshold_is_validated_under_findings(weightstats, tmp_path, capsys):
    spec = _spec(tmp_path, "findings:\n  sparse_layer_fraction: 1.5\n")
    assert main(["validate", str(spec)]) == 2
    assert f"{spec}:12: findings.sparse_layer_fraction: must be <= 1, got 1.5" in capsys.readouterr().err


# --------------------------------------------------------------------------- built

def _sparsify(checkpoint: Path) -> None:
    """conv1: 98 of its 108 weights zero; fc: 8 of its 12 weights zero; the rest 1."""
    ckpt = torch.load(checkpoint)
    state = ckpt["model_state_dict"]
    for key, zeros in (("conv1.weight", 98), ("fc.weight", 8)):
        w = torch.ones_like(state[key]).flatten()
        w[:zeros] = 0
        state[key] = w.reshape(state[key].shape)
    torch.save(ckpt, checkpoint)


def test_only_builds_it_and_its_findings_reach_report_json(weightstats, tmp_path, capsys):
    spec = _spec(tmp_path, "sections:\n  weightstats: {eps: 0.01}\nfindings:\n  sparse_layer_fraction: 0.75\n")
    _sparsify(tmp_path / "ckpt" / "epoch_1.pt")
    out = tmp_path / "site"
    assert main(["build", str(spec), "--only", "weightstats", "-o", str(out), "--quiet", "--no-cache"]) == 0
    data = json.loads((out / "report.json").read_text())
    assert list(data["sections"]) == ["weightstats"]
    summary = data["sections"]["weightstats"]
    assert summary["eps"] == 0.01 and summary["layers_auto"] is True
    assert list(summary["per_layer"]) == ["conv1", "fc"]
    assert summary["per_layer"]["conv1"]["sparsity"] == pytest.approx(98 / 108)
    assert summary["per_layer"]["fc"]["sparsity"] == pytest.approx(8 / 12)
    # the spec's threshold, not the declared 0.5: fc (67 %) stays below it
    assert [(f["id"], f["section"], f["layer"], f["severity"]) for f in data["findings"]] == [
        ("sparse-weights-conv1", "weightstats", "conv1", "warning")]
    assert "98 of 108 weights have |w| < 0.01" in data["findings"][0]["evidence"]
    assert "above 75%" in data["findings"][0]["evidence"]
    page = (out / "index.html").read_text()
    assert '<section id="weightstats"' in page and "<h2>Weight statistics</h2>" in page
    assert "<td><code>conv1</code></td><td>Conv2d</td><td class=\"mono\">4×3×3×3</td>" in page
    assert page.count('<span class="badge warning">mostly zero</span>') == 1
    assert "Per convolution and linear layer" in page     # the caption
    assert main(["build", str(spec), "--only", "weightstat", "-o", str(out), "--quiet"]) == 2
    assert "unknown section 'weightstat' (did you mean 'weightstats'?)" in capsys.readouterr().err


# --------------------------------------------------------------------------- the analysis

@pytest.mark.filterwarnings("ignore:`torch.jit.trace")
def test_weight_stats_by_hand(weightstats, make_cnn):
    from reportgen_weightstats import weight_stats, weighted_layers

    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0, 0.0005, 2.0, -2.0]]))
    model = nn.Sequential(lin, nn.ReLU())
    (s,) = weight_stats(model, ["0"], eps=1e-3).layers
    assert (s.layer, s.type, s.shape, s.size, s.near_zero) == ("0", "Linear", (1, 4), 4, 2)
    assert s.mean == pytest.approx(0.0005 / 4) and s.sparsity == 0.5
    assert s.std == pytest.approx(((8 + 0.0005 ** 2) / 4 - (0.0005 / 4) ** 2) ** 0.5)   # population std
    with pytest.raises(ValueError, match="layer '1' \\(ReLU\\) has no weight tensor"):
        weight_stats(model, ["1"], eps=1e-3)
    cnn = make_cnn()
    assert weighted_layers(cnn) == ["conv1", "conv2", "fc"]
    assert weighted_layers(torch.jit.trace(cnn, torch.zeros(1, 3, 8, 8))) == ["conv1", "conv2", "fc"]
    with pytest.raises(NotApplicable, match="no convolution or linear layer"):
        weightstats({}).analyze(_context(nn.Sequential(nn.ReLU())), weightstats({}).options)


# --------------------------------------------------------------------------- broken plugins

BROKEN = {
    "import": ("reportgen_broken_mod:Section", "raise RuntimeError('needs a GPU driver')\n",
               "failed to import: RuntimeError: needs a GPU driver"),
    "missing": ("reportgen_no_such_module:Section", None,
                "failed to import: ModuleNotFoundError: No module named 'reportgen_no_such_module'"),
    "not-a-section": ("reportgen_broken_mod:thing", "thing = 42\n",
                      "is neither a Section subclass nor a module that registers one"),
    "clash": ("reportgen_broken_mod:Filters",
              "from reportgen.sections.base import Section\nclass Filters(Section):\n    pass\n",
              "a section 'filters' is already registered (reportgen.sections."),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_plugin_is_a_plugin_error_naming_its_entry_point(tmp_path, capsys, kind):
    value, module, message = BROKEN[kind]
    name = "filters" if kind == "clash" else "broken"
    site = tmp_path / "site-packages"
    info = site / "reportgen_broken-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: reportgen-broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[reportgen.sections]\n{name} = {value}\n")
    if module is not None:
        (site / "reportgen_broken_mod.py").write_text(module)
    spec = make_project(tmp_path)
    with isolated_registry():
        sys.path.insert(0, str(site))
        importlib.invalidate_caches()
        expected = f"section plugin {name!r} ({value}, installed by reportgen-broken 0.1)"
        for load in (lambda: load_plugins(force=True), registry):   # again: never quietly left out
            with pytest.raises(PluginError) as e:
                load()
            assert str(e.value).startswith(expected) and message in str(e.value)
        assert main(["validate", str(spec)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {expected}") and "Traceback" not in err
    assert "reportgen_broken_mod" not in sys.modules


def test_editing_the_plugin_module_invalidates_its_cached_section(tmp_path):
    """The cache key holds the plugin module's digest: reportgen's version does not cover its code."""
    from reportgen.commands.build import _plugin_code
    from reportgen.sections.registry import registry as reg

    with plugin_on_path(install_plugin(tmp_path)):   # its own copy: this test edits it
        cls = reg()["weightstats"]
        before = _plugin_code(cls)
        module_file = Path(sys.modules[cls.__module__].__file__)
        module_file.write_text(module_file.read_text() + "\n# edited\n")
        assert before is not None and _plugin_code(cls) != before
    assert _plugin_code(reg()["filters"]) is None
