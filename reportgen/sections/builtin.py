"""Importing this module registers every built-in section."""
from reportgen.sections import (  # noqa: F401  # noqa: F401  # noqa: F401
    architecture,
    attribution,  # noqa: F401
    calibration,
    embeddings,
    errors,
    evolution,  # noqa: F401
    featureviz,
    model,
    robustness,
    shortcuts,  # noqa: F401
    topk,  # noqa: F401
)
