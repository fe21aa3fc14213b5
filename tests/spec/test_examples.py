"""The example specs shipped in example_configs/ pass the schema (their files are the user's)."""
from pathlib import Path

import pytest

from reportgen.spec import load_spec

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "example_configs").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_spec_passes_the_schema(path):
    spec = load_spec(path)
    assert spec["title"]
    assert spec.line("model") is not None


def test_there_are_examples():
    assert len(EXAMPLES) >= 3
