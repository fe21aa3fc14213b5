"""The example specs shipped in example_configs/ pass the schema (their files are the user's)."""
from pathlib import Path

import pytest

from reportgen.spec import load_spec
from tests.plugins import PLUGIN_SOURCE, install_plugin, plugin_on_path

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "example_configs").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_spec_passes_the_schema(path):
    spec = load_spec(path)
    assert spec["title"]
    assert spec.line("model") is not None


def test_there_are_examples():
    assert len(EXAMPLES) >= 3


def test_plugin_example_spec_passes_the_schema_with_its_plugin_installed(tmp_path):
    """plugin_section/spec.yaml names the plugin's section: valid once the package is installed."""
    with plugin_on_path(install_plugin(tmp_path)):
        spec = load_spec(PLUGIN_SOURCE / "spec.yaml")
        assert spec["sections"]["weightstats"] == {"layers": "auto", "eps": 0.001}
        assert spec["findings"]["sparse_layer_fraction"] == 0.5
    with pytest.raises(Exception, match="unknown section 'weightstats'"):
        load_spec(PLUGIN_SOURCE / "spec.yaml")
