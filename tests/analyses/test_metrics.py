"""Reading training curves: CSV, JSONL, TensorBoard, checkpoint metrics; errors name file and line."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from reportgen.analyses import metrics as mt
from reportgen.errors import InputError

HAS_TB = importlib.util.find_spec("tensorboard") is not None


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_csv_step_column_gaps_and_text_columns(tmp_path):
    p = write(tmp_path, "log.csv", "epoch,train_loss,val_acc,phase\n"
                                   "1,0.9,,train\n1,,0.5,val\n2,0.5,,train\n2,,0.7,val\n")
    t = mt.read_metrics(p)
    assert t.source == "csv" and t.x_label == "epoch" and t.ignored == ["phase"]
    assert sorted(t.series) == ["train_loss", "val_acc"]
    np.testing.assert_array_equal(t.series["val_acc"].steps, [1, 2])
    np.testing.assert_array_equal(t.series["val_acc"].values, [0.5, 0.7])
    np.testing.assert_array_equal(t.series["train_loss"].values, [0.9, 0.5])


def test_csv_prefers_step_over_epoch_and_row_number_without_either(tmp_path):
    t = mt.read_metrics(write(tmp_path, "a.csv", "epoch,step,loss\n0,10,3\n0,20,2\n1,30,1\n"))
    assert t.x_label == "step" and list(t.series) == ["loss"]      # epoch is an axis, not a curve
    np.testing.assert_array_equal(t.series["loss"].steps, [10, 20, 30])
    t = mt.read_metrics(write(tmp_path, "b.csv", "loss\n3\n2\n"))
    assert t.x_label == "row"
    np.testing.assert_array_equal(t.series["loss"].steps, [1, 2])


@pytest.mark.parametrize("text,line,words", [
    ("step,loss\n1,0.5\n2,oops\n", 3, "'oops'"),
    ("step,loss\n1,0.5\n2,0.4,9\n", 3, "3 fields"),
    ("step,,loss\n1,2,3\n", 1, "header"),
    ("step,loss\n", None, "no data rows"),
    ("", None, "empty"),
    ("step,name\n1,a\n2,b\n", None, "no numeric metric"),
])
def test_bad_csv_names_file_and_line(tmp_path, text, line, words):
    p = write(tmp_path, "bad.csv", text)
    with pytest.raises(InputError) as e:
        mt.read_metrics(p)
    assert str(p) in str(e.value) and words in str(e.value)
    if line is not None:
        assert f"line {line}" in str(e.value)


def test_jsonl_nested_objects_and_metadata(tmp_path):
    p = write(tmp_path, "log.jsonl", '{"step": 1, "loss": 2.0, "val": {"acc": 0.5}, "phase": "x"}\n'
                                     '\n{"step": 2, "loss": 1.0, "flag": true}\n')
    t = mt.read_metrics(p)
    assert t.source == "jsonl" and sorted(t.series) == ["loss", "val/acc"]
    np.testing.assert_array_equal(t.series["loss"].values, [2.0, 1.0])


@pytest.mark.parametrize("text,line", [('{"step": 1}\n{"step": 2,\n', 2), ('{"a": 1}\n[1, 2]\n', 2)])
def test_bad_jsonl_names_the_line(tmp_path, text, line):
    p = write(tmp_path, "log.jsonl", text)
    with pytest.raises(InputError, match=f"line {line}") as e:
        mt.read_metrics(p)
    assert str(p) in str(e.value)


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="unknown metrics format"):
        mt.read_metrics(write(tmp_path, "log.xlsx", "x"))
    with pytest.raises(InputError, match="not found"):
        mt.read_metrics(tmp_path / "nope.csv")


def test_from_checkpoints_uses_epoch_when_every_checkpoint_has_one():
    t = mt.from_checkpoints([{"epoch": 2, "val_acc": 0.5}, {"epoch": 4, "val_acc": 0.6, "loss": 1.0}])
    assert t.x_label == "epoch" and sorted(t.series) == ["loss", "val_acc"]
    np.testing.assert_array_equal(t.series["val_acc"].steps, [2, 4])
    np.testing.assert_array_equal(t.series["loss"].steps, [4])
    t = mt.from_checkpoints([{"val_acc": 0.5}, {"epoch": 4, "val_acc": 0.6}])
    assert t.x_label == "checkpoint"
    np.testing.assert_array_equal(t.series["val_acc"].steps, [1, 2])


def test_kind_and_regression():
    assert mt.kind("val_loss") == "loss" and mt.kind("top1_err") == "loss"
    assert mt.kind("val_acc") == "accuracy" and mt.kind("val/mAP") == "accuracy"
    assert mt.kind("lr") == "other"
    r = mt.regression(np.array([0.5, 0.9, 0.87]), "val_acc")       # fractions become points
    assert r["drop"] == pytest.approx(3.0) and r["best"] == 0.9
    r = mt.regression(np.array([50.0, 90.0, 89.0]), "val_acc")     # already percent
    assert r["drop"] == pytest.approx(1.0)
    r = mt.regression(np.array([2.0, 1.0, 1.5]), "val_loss")
    assert r["drop"] == pytest.approx(0.5)
    assert mt.regression(np.array([1.0, 2.0]), "lr") is None
    assert mt.regression(np.array([1.0]), "val_acc") is None


def test_tensorboard_missing_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "tensorboard.backend", None)
    monkeypatch.setitem(sys.modules, "tensorboard.backend.event_processing", None)
    f = write(tmp_path, "events.out.tfevents.1.host", "x")
    with pytest.raises(InputError, match="pip install tensorboard"):
        mt.read_metrics(f)


@pytest.mark.skipif(not HAS_TB, reason="needs the tensorboard package (pip install tensorboard)")
def test_tensorboard_runs_folder(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    for run, scale in (("train", 1.0), ("val", 2.0)):
        with SummaryWriter(str(tmp_path / "runs" / run)) as w:
            for step in range(3):
                w.add_scalar("loss", scale / (step + 1), step)
    t = mt.read_metrics(tmp_path / "runs")
    assert t.source == "tensorboard" and sorted(t.series) == ["train/loss", "val/loss"]
    np.testing.assert_allclose(t.series["val/loss"].values, [2.0, 1.0, 2 / 3], rtol=1e-6)
    np.testing.assert_array_equal(t.series["train/loss"].steps, [0, 1, 2])
    one = next((tmp_path / "runs" / "train").glob("events.out.tfevents.*"))
    assert list(mt.read_metrics(one).series) == ["loss"]


@pytest.mark.skipif(not HAS_TB, reason="needs the tensorboard package (pip install tensorboard)")
def test_tensorboard_empty_folder(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.raises(InputError, match="no TensorBoard event files"):
        mt.read_metrics(tmp_path / "runs")
