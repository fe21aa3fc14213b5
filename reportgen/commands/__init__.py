"""The commands: build, compare, publish, the PR comment, planning, baselines, docs and the notebook helper."""
