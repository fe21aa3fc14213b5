"""``torchrun -m reportgen.distributed audit`` (2 CPU processes, gloo) equals one process, and
``reportgen build --audit-pass`` uses that file (and refuses one made on other inputs, exit 2).

The audit sections' dataset pass: confusion counts, calibration sums (bins, NLL, Brier, the
temperature grid), each image's confidence, the confident mistakes, and the robustness counts
per corruption and severity. One image per batch, so each image's logits are computed
identically in both runs and float sums differ only by the order they are added in.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reportgen.analyses.audit_pass import load_audit_pass
from reportgen.cli import main
from tests.test_distributed_compare import write_pair

ROOT = Path(__file__).resolve().parents[1]
ROBUSTNESS = ("sections:\n  robustness: {images: 11, severities: [1, 2], "
              "corruptions: [gaussian_noise, brightness, gaussian_blur]}\n")
ONLY = ["errors", "calibration", "robustness"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = write_pair(tmp_path_factory.mktemp("daudit"), 7)
    spec = root / "new.yaml"
    spec.write_text(spec.read_text() + ROBUSTNESS)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "reportgen.distributed", "audit", "--spec", "new.yaml", "--out", "audit.npz"],
        cwd=root, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def _one_process(spec: Path):
    from reportgen.analyses import predictions as pr
    from reportgen.analyses import robustness as rb
    from reportgen.commands.build import audit_plan, make_context
    from reportgen.sections.audit import dataset_labels
    from reportgen.sections.dataset_pass import dataset_for
    from reportgen.spec import load_spec
    from reportgen.spec.resolve import resolve

    res = resolve(load_spec(spec), "cpu")
    ctx = make_context(res)
    plan, found = audit_plan(ctx), dataset_labels(ctx)
    preds = pr.prediction_pass(res.model, dataset_for(ctx), found.labels, found.names, 1, 0, "cpu",
                               res.output_key, keep=plan["keep"])
    robust = rb.robustness_pass(res.model, dataset_for(ctx), found.labels, plan["corruptions"], plan["severities"],
                                plan["images"], 1, 0, "cpu", res.output_key, res.spec["seed"],
                                example_severity=plan["example_severity"])
    return preds, robust


def test_two_processes_equal_one(project):
    got, header = load_audit_pass(project / "audit.npz")
    assert header["kind"] == "audit-pass" and json.loads(header["plan"])["images"] == 11
    want_p, want_r = _one_process(project / "new.yaml")
    g, w = got.predictions, want_p
    assert g.n_images == w.n_images == 14 and g.confusion.classes == w.confusion.classes
    np.testing.assert_array_equal(g.confusion.confusion, w.confusion.confusion)
    # rtol 1e-5; the absolute floor is for the NLL's derivative sums, whose O(1) terms of both signs
    # cancel near the fitted temperature (the processes' float32 logits may differ in the last bit)
    for name in ("sums", "scalars", "grid_nll", "grid_sums"):
        np.testing.assert_allclose(getattr(g.calibration, name).numpy(), getattr(w.calibration, name).numpy(),
                                   rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(g.correct, w.correct)
    np.testing.assert_allclose(g.confidence, w.confidence, rtol=1e-6)
    np.testing.assert_array_equal(g.mistakes.indices, w.mistakes.indices)
    assert g.calibration_result().ece == pytest.approx(w.calibration_result().ece, rel=1e-5)
    gr, wr = got.robustness, want_r
    assert (gr.corruptions, gr.severities, gr.images, gr.labelled, gr.clean_correct) == \
        (wr.corruptions, wr.severities, wr.images, wr.labelled, wr.clean_correct) and gr.images == 11
    np.testing.assert_array_equal(gr.correct, wr.correct)
    np.testing.assert_array_equal(gr.flips, wr.flips)
    assert [(e["corruption"], e["index"]) for e in gr.examples] == [(e["corruption"], e["index"]) for e in wr.examples]
    for a, b in zip(gr.examples, wr.examples):
        np.testing.assert_array_equal(a["picture"], b["picture"])


def test_build_uses_the_pass_and_refuses_a_stale_one(project, tmp_path, capsys):
    spec = project / "new.yaml"
    args = ["--only", *ONLY, "--quiet", "--no-cache"]
    assert main(["build", str(spec), "-o", str(tmp_path / "a"), *args]) == 0
    assert main(["build", str(spec), "-o", str(tmp_path / "b"), "--audit-pass", str(project / "audit.npz"),
                 *args]) == 0
    a, b = (json.loads((tmp_path / d / "report.json").read_text())["sections"] for d in "ab")
    assert a["errors"]["confusion"] == b["errors"]["confusion"] and a["errors"]["accuracy"] == b["errors"]["accuracy"]
    assert a["calibration"]["ece"] == pytest.approx(b["calibration"]["ece"], rel=1e-5)
    assert a["calibration"]["nll"] == pytest.approx(b["calibration"]["nll"], rel=1e-5)
    assert a["robustness"]["corruptions"] == b["robustness"]["corruptions"]
    capsys.readouterr()
    # another model (the spec's seed changed): the pass is stale
    stale = project / "stale.yaml"
    stale.write_text(spec.read_text().replace("seed: 1}", "seed: 2}"))
    assert stale.read_text() != spec.read_text()
    assert main(["build", str(stale), "-o", str(tmp_path / "c"), "--audit-pass", str(project / "audit.npz"),
                 *args]) == 2
    assert "other inputs" in capsys.readouterr().err and not (tmp_path / "c").exists()
    # other robustness options: stale too
    stale.write_text(spec.read_text().replace("severities: [1, 2]", "severities: [1, 3]"))
    assert main(["build", str(stale), "-o", str(tmp_path / "d"), "--audit-pass", str(project / "audit.npz"),
                 *args]) == 2
    assert "robustness options" in capsys.readouterr().err
    # not a pass at all
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    assert main(["build", str(spec), "-o", str(tmp_path / "e"), "--audit-pass", str(junk), *args]) == 2
    assert "not an audit pass" in capsys.readouterr().err
