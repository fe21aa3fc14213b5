"""Checkpoint loading: every layout round-trips, nothing in a file ever executes."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from reportgen.errors import CheckpointError, InputError
from reportgen.model.checkpoints import (
    apply_state_dict,
    expand_checkpoints,
    load_checkpoint,
    natural_key,
)


def tiny_net(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


def fresh_net(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(1)  # different weights than tiny_net, so a load is visible
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def prefixed(sd, prefix):
    return {prefix + k: v for k, v in sd.items()}


LAYOUTS = {
    "raw": lambda sd: sd,
    "state_dict": lambda sd: {"state_dict": sd, "epoch": 7, "optimizer": {"lr": 0.1}},
    "model": lambda sd: {"model": sd, "epoch": 7},
    "model_state_dict": lambda sd: {"model_state_dict": sd, "epoch": 7},
    "net": lambda sd: {"net": sd, "acc": 0.5},
    "module.": lambda sd: prefixed(sd, "module."),
    "model.": lambda sd: {"state_dict": prefixed(sd, "model."), "epoch": 7},
    "model.module.": lambda sd: {"state_dict": prefixed(sd, "model.module.")},
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_round_trips(tmp_path, layout):
    src = tiny_net()
    path = tmp_path / "ckpt.pt"
    torch.save(LAYOUTS[layout](src.state_dict()), path)
    ckpt = load_checkpoint(path)
    dst = fresh_net()
    apply_state_dict(dst, ckpt.state_dict, path)
    assert_same_weights(src, dst)


def test_layout_and_prefixes_are_reported(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"state_dict": prefixed(tiny_net().state_dict(), "model.module.")}, path)
    ckpt = load_checkpoint(path)
    assert ckpt.layout == "state_dict"
    assert ckpt.stripped == ("model.", "module.")


def test_prefix_kept_when_not_on_every_key(tmp_path):
    sd = {"model.weight": torch.zeros(2), "head.weight": torch.zeros(2)}
    path = tmp_path / "c.pt"
    torch.save(sd, path)
    assert set(load_checkpoint(path).state_dict) == {"model.weight", "head.weight"}


def test_model_whose_child_is_called_model(tmp_path):
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = tiny_net()

    src = Wrapper()
    path = tmp_path / "c.pt"
    torch.save(src.state_dict(), path)  # every key starts with "model." legitimately
    dst = Wrapper()
    nn.init.zeros_(dst.model[0].weight)
    apply_state_dict(dst, load_checkpoint(path).state_dict, path)
    assert_same_weights(src, dst)


def test_safetensors(tmp_path):
    from safetensors.torch import save_file

    src = tiny_net()
    path = tmp_path / "w.safetensors"
    save_file(prefixed(src.state_dict(), "module."), str(path),
              metadata={"epoch": "4", "val_acc": "0.75", "note": "hello"})
    ckpt = load_checkpoint(path)
    assert ckpt.layout == "safetensors"
    assert ckpt.epoch == 4 and ckpt.metrics["val_acc"] == 0.75 and "note" not in ckpt.metrics
    dst = fresh_net()
    apply_state_dict(dst, ckpt.state_dict, path)
    assert_same_weights(src, dst)


def test_corrupt_safetensors(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(path)


class _Evil:
    def __init__(self, marker: Path, how: str):
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "system":
            return (os.system, (f"touch '{self.marker}'",))
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("how", ["system", "open"])
def test_malicious_pickle_never_runs(tmp_path, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": tiny_net().state_dict(), "payload": _Evil(marker, how)}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert not marker.exists()
    message = str(info.value)
    assert str(path) in message
    assert "arbitrary code" in message and "refuses" in message
    assert "torch.save(model.state_dict()" in message


def test_malicious_legacy_pickle_never_runs(tmp_path):
    import pickle

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Evil(marker, "open")))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_numpy_scalar_metrics_are_allowed(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"state_dict": tiny_net().state_dict(), "best_acc1": np.float64(0.91),
                "epoch": np.int64(12), "top5": np.float32(0.5)}, path)
    ckpt = load_checkpoint(path)
    assert ckpt.epoch == 12
    assert ckpt.metrics["best_acc1"] == pytest.approx(0.91)
    assert ckpt.metrics["top5"] == pytest.approx(0.5)


def test_metrics_extraction(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"state_dict": tiny_net().state_dict(), "epoch": 3, "loss": 0.25,
                "best_acc1": torch.tensor(71.5), "flag": True, "name": "run",
                "metrics": {"val_acc": 0.8, "val_loss": torch.tensor(0.4), "hist": [1, 2]},
                "optimizer": {"param_groups": [{"lr": 0.1}]}}, path)
    ckpt = load_checkpoint(path)
    assert ckpt.epoch == 3
    assert ckpt.metrics == pytest.approx({"epoch": 3.0, "loss": 0.25, "best_acc1": 71.5,
                                          "val_acc": 0.8, "val_loss": 0.4})


def test_raw_state_dict_has_no_metrics(tmp_path):
    path = tmp_path / "c.pt"
    torch.save(tiny_net().state_dict(), path)
    ckpt = load_checkpoint(path)
    assert ckpt.layout == "raw" and ckpt.epoch is None and ckpt.metrics == {}


def test_torchscript_archive_is_refused_clearly(tmp_path):
    import warnings

    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(path))
    with pytest.raises(CheckpointError, match="TorchScript"):
        load_checkpoint(path)


@pytest.mark.parametrize("content, pattern", [
    (None, "truncated"),            # first half of a real checkpoint
    (b"definitely not a checkpoint", "corrupt"),
    (b"", "empty"),
])
def test_unreadable_files(tmp_path, content, pattern):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save(tiny_net().state_dict(), path)
        content = path.read_bytes()[:200]
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("obj, pattern", [
    ({}, "empty dict"),
    ({"epoch": 3, "state_dict": {"a": 1}}, "no tensors"),
    ([torch.zeros(1)], "found a list"),
])
def test_no_weights(tmp_path, obj, pattern):
    path = tmp_path / "c.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_mismatch_names_keys_and_shapes(tmp_path):
    sd = tiny_net(num_classes=10).state_dict()
    del sd["0.bias"]
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        apply_state_dict(fresh_net(num_classes=3), sd, tmp_path / "c.pt")
    message = str(info.value)
    assert "1 missing key(s)" in message and "0.bias" in message
    assert "1 unexpected key(s)" in message and "extra.weight" in message
    assert "5.weight: checkpoint [10, 4] vs model [3, 4]" in message
    assert "5.bias: checkpoint [10] vs model [3]" in message
    assert "c.pt" in message


def test_mismatch_listing_is_capped():
    sd = {f"junk{i}": torch.zeros(1) for i in range(25)}
    sd.update(tiny_net().state_dict())
    with pytest.raises(CheckpointError) as info:
        apply_state_dict(fresh_net(), sd, "c.pt")
    message = str(info.value)
    assert "25 unexpected key(s)" in message and "... and 15 more" in message


def test_model_is_untouched_after_a_mismatch():
    dst = fresh_net(num_classes=3)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointError):
        apply_state_dict(dst, tiny_net(num_classes=10).state_dict(), "c.pt")
    for k, v in dst.state_dict().items():
        assert torch.equal(v, before[k])


def test_num_batches_tracked_is_tolerated():
    src = tiny_net()
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    dst = fresh_net()
    apply_state_dict(dst, sd, "c.pt")
    assert torch.equal(dst[1].running_var, src[1].running_var)


def test_natural_key():
    names = ["epoch_10.pt", "epoch_2.pt", "Epoch_1.pt", "epoch_002b.pt", "best.pt"]
    assert sorted(names, key=natural_key) == [
        "best.pt", "Epoch_1.pt", "epoch_2.pt", "epoch_002b.pt", "epoch_10.pt"]


def test_expand_checkpoints(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for n in (1, 2, 10):
        (runs / f"epoch_{n}.pt").write_bytes(b"x")
    (runs / "notes.txt").write_text("x")
    got = expand_checkpoints(
        [{"path": "runs/epoch_1.pt", "label": "first"}, "runs/epoch_*.pt",
         str(runs / "epoch_2.pt")], tmp_path)
    assert got == [("first", runs / "epoch_1.pt"), ("epoch_2", runs / "epoch_2.pt"),
                   ("epoch_10", runs / "epoch_10.pt")]


def test_expand_checkpoints_disambiguates_stems(tmp_path):
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "last.pt").write_bytes(b"x")
    got = expand_checkpoints(["*/last.pt"], tmp_path)
    assert [label for label, _ in got] == ["a/last", "b/last"]


@pytest.mark.parametrize("entry", ["runs/none_*.pt", "missing.pt", {"path": "missing.pt"}])
def test_expand_checkpoints_errors_name_the_entry(tmp_path, entry):
    with pytest.raises(InputError) as info:
        expand_checkpoints([entry], tmp_path)
    assert ("none_*" in str(info.value)) or ("missing.pt" in str(info.value))


@pytest.mark.parametrize("entry", ["runs/none_*.pt", "missing.pt", {"path": "missing.pt"}])
def test_expand_checkpoints_errors_name_the_resolved_path(tmp_path, entry):
    written = entry["path"] if isinstance(entry, dict) else entry
    with pytest.raises(InputError) as info:
        expand_checkpoints([entry], tmp_path)
    assert info.value.path == written
    assert info.value.resolved == str(tmp_path / written)
    assert str(info.value).endswith(f" (resolved: {tmp_path / written})")


def timm_train_checkpoint(path: Path, weights: nn.Module, ema: nn.Module, args=None) -> None:
    """What timm's train.py (CheckpointSaver) writes: weights, an EMA copy, argparse args, bookkeeping."""
    import argparse

    args = args if args is not None else argparse.Namespace(
        model="resnet18", lr=0.1, epochs=3, mean=None, input_size=[3, 64, 64], data_dir="/data")
    torch.save({"epoch": 2, "arch": "resnet18", "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
                "version": 2, "args": args, "state_dict": weights.state_dict(),
                "state_dict_ema": ema.state_dict(), "metric": 71.5,
                "saver": {"checkpoint_files": [("checkpoint-1.pth.tar", 70.0)], "best_epoch": 1,
                          "best_metric": 70.0, "pending": (2, 71.5)}}, path)


def test_timm_train_checkpoint_with_namespace_args_loads(tmp_path):
    path = tmp_path / "checkpoint-2.pth.tar"
    timm_train_checkpoint(path, tiny_net(), fresh_net())
    loaded = load_checkpoint(path)
    assert loaded.layout == "state_dict" and loaded.others == ("state_dict_ema",)
    assert loaded.epoch == 2 and loaded.metrics["metric"] == 71.5
    assert "version" not in loaded.metrics   # the file format's version is no training metric
    model = fresh_net()
    apply_state_dict(model, loaded.state_dict, path)
    assert_same_weights(model, tiny_net())


def test_ema_weights_are_selected_by_key(tmp_path):
    path = tmp_path / "checkpoint-2.pth.tar"
    timm_train_checkpoint(path, tiny_net(), fresh_net())
    loaded = load_checkpoint(path, "state_dict_ema")
    assert loaded.layout == "state_dict_ema" and loaded.others == ("state_dict",)
    model = tiny_net()
    apply_state_dict(model, loaded.state_dict, path)
    assert_same_weights(model, fresh_net())


@pytest.mark.parametrize("obj, pattern", [
    (lambda sd: sd, "raw state dict"),
    (lambda sd: {"state_dict": sd}, "under 'state_dict'"),
])
def test_a_selected_key_the_file_lacks_is_named(tmp_path, obj, pattern):
    path = tmp_path / "c.pt"
    torch.save(obj(tiny_net().state_dict()), path)
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_checkpoint(path, "state_dict_ema")
    assert "'state_dict_ema'" in str(info.value) and str(path) in str(info.value)


def test_weights_only_under_another_key_suggest_selecting_it(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"state_dict_ema": tiny_net().state_dict(), "epoch": 1}, path)
    with pytest.raises(CheckpointError, match="checkpoint_weights: state_dict_ema"):
        load_checkpoint(path)


def test_namespace_args_holding_code_are_still_refused(tmp_path):
    import argparse

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    timm_train_checkpoint(path, tiny_net(), tiny_net(), argparse.Namespace(hook=_Evil(marker, "open")))
    with pytest.raises(CheckpointError, match="arbitrary code"):
        load_checkpoint(path)
    assert not marker.exists()
