"""reportgen: one self-contained HTML report of what a trained CNN has learned."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "build", "compare", "explain", "receptive_field"]


def __getattr__(name):
    # Lazy so `import reportgen` stays cheap and `reportgen --help` is instant.
    if name == "build":
        from reportgen.commands.build import build
        return build
    if name == "compare":
        from reportgen.commands.compare import compare
        return compare
    if name == "explain":
        from reportgen.analyses.explain import explain
        return explain
    if name == "receptive_field":
        from reportgen.analyses.receptive_field import receptive_field
        return receptive_field
    raise AttributeError(f"module 'reportgen' has no attribute {name!r}")
