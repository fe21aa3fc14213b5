"""Old option names (before units were in the names) are still read as the new ones."""
import pytest

from reportgen.options import Float, Mapping, OptionError
from reportgen.sections.architecture import ArchitectureSection
from reportgen.sections.featureviz import FeatureVizSection
from reportgen.spec.schema import SPEC


def test_an_old_name_is_read_as_the_new_one():
    m = Mapping({"budget_s": Float(default=1.0)}, aliases={"budget": "budget_s"})
    assert m.check({"budget": 3}, "") == {"budget_s": 3.0}
    assert m.check({}, "") == {"budget_s": 1.0}


def test_both_names_is_an_error_at_the_old_one():
    m = Mapping({"budget_s": Float(default=1.0)}, aliases={"budget": "budget_s"})
    with pytest.raises(OptionError) as e:
        m.check({"budget": 3, "budget_s": 4}, "")
    assert e.value.path == "budget"


def test_a_bad_value_under_the_old_name_names_the_old_key():
    m = Mapping({"budget_s": Float(default=1.0)}, aliases={"budget": "budget_s"})
    with pytest.raises(OptionError) as e:
        m.check({"budget": "fast"}, "")
    assert e.value.path == "budget"


def test_the_renamed_options():
    assert ArchitectureSection({"layout": "dot"}).options["engine"] == "dot"
    assert FeatureVizSection({"budget": 5}).options["budget_gmacs"] == 5.0
    assert SPEC.fields["output"].check({"page_budget": 2}, "output")["page_budget_mb"] == 2.0
    assert "budget_s" in SPEC.fields and SPEC.aliases == {"budget": "budget_s"}
