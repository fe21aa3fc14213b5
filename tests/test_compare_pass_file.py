"""``reportgen compare --pass PASS.npz`` reads a file someone else wrote: whatever is wrong with it
(not a zip, cut short, keys missing, wrong types, pickled objects) exits 2 naming the file, and
nothing is written. And ``save_pass`` writes by rename, so a reader never sees half a pass.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import pytest

from reportgen.analyses.compare_pass import load_pass, save_pass
from reportgen.cli import main
from tests.test_distributed_compare import write_pair


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """BASE and NEW (one small architecture, two seeds) and their pass, computed in this process."""
    from reportgen.analyses.weight_diff import architecture_mismatch
    from reportgen.commands.compare import dataset_pass, pass_header, resolve_pair

    root = write_pair(tmp_path_factory.mktemp("passfile"), 3)
    _, _, base, new = resolve_pair(root / "base.yaml", root / "new.yaml", "cpu")
    result = dataset_pass(base, new, same=not architecture_mismatch(base.model, new.model))
    save_pass(root / "pass.npz", result, pass_header(base, new))
    return root


def _members(path: Path) -> Dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def _zip(members: Dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def _skeleton(good: Path) -> dict:
    with np.load(good, allow_pickle=False) as npz:
        return json.loads(str(npz["__skeleton__"]))


def _with_skeleton(good: Path, edit: Callable[[dict], None]) -> bytes:
    skeleton = _skeleton(good)
    edit(skeleton)
    return _zip({**_members(good), "__skeleton__.npy": _npy(np.array(json.dumps(skeleton)))})


def _set(path: str, value) -> Callable[[dict], None]:
    def edit(skeleton: dict) -> None:
        *parents, last = path.split(".")
        node = skeleton
        for p in parents:
            node = node[p]
        node[last] = value
    return edit


BAD: Dict[str, Callable[[Path], bytes]] = {
    "random bytes": lambda good: np.random.default_rng(0).bytes(300),
    "empty": lambda good: b"",
    "truncated zip": lambda good: good.read_bytes()[: len(good.read_bytes()) // 2],
    "zip of nothing": lambda good: _zip({}),
    "no skeleton": lambda good: _zip({k: v for k, v in _members(good).items() if k != "__skeleton__.npy"}),
    "skeleton not JSON": lambda good: _zip({**_members(good), "__skeleton__.npy": _npy(np.array("{nope"))}),
    "skeleton a list": lambda good: _zip({**_members(good), "__skeleton__.npy": _npy(np.array("[1, 2]"))}),
    "skeleton numbers": lambda good: _zip({**_members(good), "__skeleton__.npy": _npy(np.arange(3))}),
    "object array": lambda good: _zip({**_members(good), "a0.npy": _npy(np.array([{"x": 1}], dtype=object))}),
    "missing array": lambda good: _zip({k: v for k, v in _members(good).items() if k != "a0.npy"}),
    "header a list": lambda good: _with_skeleton(good, _set("header", [1, 2])),
    "header digest a number": lambda good: _with_skeleton(good, _set("header.base_inputs", 7)),
    "header digest not hex": lambda good: _with_skeleton(good, _set("header.base_inputs", "../../x")),
    "header of another kind": lambda good: _with_skeleton(good, _set("header.kind", "<img src=x>")),
    "no result": lambda good: _with_skeleton(good, lambda s: s.pop("result")),
    "cka a string": lambda good: _with_skeleton(good, _set("result.cka", "x")),
    "cka layers a number": lambda good: _with_skeleton(good, _set("result.cka.base_layers", 3)),
    "cka n a string": lambda good: _with_skeleton(good, _set("result.cka.n", "14")),
    "cka values a string": lambda good: _with_skeleton(good, _set("result.cka.biased", "0.5")),
    "cka mode unknown": lambda good: _with_skeleton(good, _set("result.cka.mode", "rows")),
    "cka values of another shape": lambda good: _with_skeleton(good, lambda s: s["result"]["cka"].update(
        base_layers=s["result"]["cka"]["base_layers"][:1])),
    "class names numbers": lambda good: _with_skeleton(good, _set("result.predictions.class_names", [1, 2])),
    "flips a dict of strings": lambda good: _with_skeleton(good, _set("result.predictions.negative",
                                                                      {"indices": "a", "labels": "b",
                                                                       "base": "c", "new": "d"})),
    "counts a string": lambda good: _with_skeleton(good, _set("result.predictions.agree", "all")),
    "units k a list": lambda good: _with_skeleton(good, _set("result.units.k", [9])),
    "units shapes a list": lambda good: _with_skeleton(good, _set("result.units.base.shapes", [1])),
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_pass_file_exits_2_naming_it(project, tmp_path, capsys, name):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(BAD[name](project / "pass.npz"))
    out = tmp_path / "out"
    code = main(["compare", str(project / "base.yaml"), str(project / "new.yaml"), "-o", str(out),
                 "--pass", str(bad), "--only", "summary", "--quiet", "--no-cache"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(bad) in err and "Traceback" not in err
    assert not out.exists()


def test_save_pass_replaces_the_file_whole(project, tmp_path, monkeypatch):
    """A write that fails halfway leaves the old pass as it was and no temp file beside it;
    the name is kept as given (numpy would add ".npz" to a path without it)."""
    result, header = load_pass(project / "pass.npz")
    target = tmp_path / "pass"
    save_pass(target, result, header)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pass"]
    before = target.read_bytes()

    def broken(f, **arrays):
        f.write(b"PK half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", broken)
    with pytest.raises(OSError, match="disk full"):
        save_pass(target, result, header)
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["pass"]


def test_a_pass_outside_the_spec_folder_is_shown_by_its_name(project, tmp_path):
    """report.json and the page name the pass the way they name every file (``paths.public_path``)."""
    elsewhere = tmp_path / "home" / "alice-private" / "pass.npz"
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_bytes((project / "pass.npz").read_bytes())
    out = tmp_path / "out"
    assert main(["compare", str(project / "base.yaml"), str(project / "new.yaml"), "-o", str(out),
                 "--pass", str(elsewhere), "--only", "summary", "--quiet", "--no-cache"]) == 0
    assert json.loads((out / "report.json").read_text())["comparison"]["inputs"]["pass_file"] == "pass.npz"
    for page in ("report.json", "index.html"):
        assert "alice-private" not in (out / page).read_text()
