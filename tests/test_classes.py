"""Class names from lists, .txt and .json files, checked against the model's outputs."""
from __future__ import annotations

import json

import pytest

from reportgen.errors import InputError
from reportgen.model.classes import load_classes


def test_default_names():
    assert load_classes(None, ".", num_classes=3) == ["class_0", "class_1", "class_2"]


def test_default_needs_a_count():
    with pytest.raises(InputError, match="unknown"):
        load_classes(None, ".")


def test_inline_list():
    assert load_classes(["cat", "dog", 7], ".", num_classes=3) == ["cat", "dog", "7"]


def test_txt_strips_bom_and_blank_lines(tmp_path):
    (tmp_path / "classes.txt").write_bytes("\ufeffcat\r\n\r\n dog \n\nbird\n".encode("utf-8"))
    assert load_classes("classes.txt", tmp_path) == ["cat", "dog", "bird"]


def test_json_list(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps(["cat", "dog"]))
    assert load_classes("c.json", tmp_path, num_classes=2) == ["cat", "dog"]


def test_json_imagenet_class_index(tmp_path):
    index = {"1": ["n01443537", "goldfish"], "0": ["n01440764", "tench"]}
    (tmp_path / "imagenet_class_index.json").write_text(json.dumps(index))
    assert load_classes(str(tmp_path / "imagenet_class_index.json"), "/elsewhere") == [
        "tench", "goldfish"]


def test_json_index_mapping_with_gap(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"0": "a", "2": "c"}))
    with pytest.raises(InputError, match=r"missing \[1\]"):
        load_classes("c.json", tmp_path)


def test_invalid_json_names_file_and_line(tmp_path):
    (tmp_path / "c.json").write_text('[\n"a",\n]')
    with pytest.raises(InputError, match="line 3") as info:
        load_classes("c.json", tmp_path)
    assert "c.json" in str(info.value)


def test_length_mismatch_gives_both_numbers(tmp_path):
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    with pytest.raises(InputError) as info:
        load_classes("classes.txt", tmp_path, num_classes=10)
    message = str(info.value)
    assert "3 class names" in message and "10 outputs" in message and "classes.txt" in message


@pytest.mark.parametrize("value, pattern", [
    ("missing.txt", "not found"),
    ("classes.csv", "unsupported"),
    ([], "empty"),
    (["a", None], "class 1"),
    (42, "must be a list"),
])
def test_bad_values(tmp_path, value, pattern):
    (tmp_path / "classes.csv").write_text("a,b")
    with pytest.raises(InputError, match=pattern):
        load_classes(value, tmp_path)
