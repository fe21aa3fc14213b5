"""Importing this module registers every built-in section."""
from reportgen.sections import architecture, model  # noqa: F401
from reportgen.sections import evolution  # noqa: F401
from reportgen.sections import topk  # noqa: F401
from reportgen.sections import embeddings, featureviz  # noqa: F401
from reportgen.sections import attribution  # noqa: F401
from reportgen.sections import shortcuts  # noqa: F401
from reportgen.sections import calibration, errors, robustness  # noqa: F401
