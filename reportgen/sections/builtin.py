"""Importing this module registers every built-in section."""
from reportgen.sections import model  # noqa: F401

try:  # sections added by modules that may not exist in every checkout stage
    from reportgen.sections import architecture  # noqa: F401
except ImportError as e:  # pragma: no cover
    if "reportgen.sections.architecture" not in str(e) and "architecture" not in str(e):
        raise
