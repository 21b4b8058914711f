"""Label mapping files (`--label-mapping`): both layouts read; anything but integer label values is refused with a
message naming the file, never an internal error or a value silently changed (5.9 became 5, true became 1)."""

from __future__ import annotations

import json

import pytest

from maskmed_core.io.errors import InputError
from maskmed_core.label_mapping import read_label_mapping


def test_both_layouts_read(tmp_path):
    plain = tmp_path / "plain.json"
    plain.write_text('{"1": 6, "5": 0}')
    assert read_label_mapping(plain) == {1: 6, 5: 0}
    amos = tmp_path / "amos.json"
    amos.write_text(json.dumps({"classes": [{"amos_id": 6, "totalseg_v2_id": 5, "name": "liver"}]}))
    assert read_label_mapping(amos) == {5: 6}


@pytest.mark.parametrize(("text", "phrase"), [
    ('{"1": Infinity}', "JSON holds Infinity"),
    ('{"1": 5.9}', "expected an integer, got float 5.9"),
    ('{"1": true}', "expected an integer, got bool"),
    ('{"liver": 6}', "expected an integer, got str 'liver'"),
    ('{"1": 70000}', "70000 is outside 0..65535"),
    ('{"-3": 1}', "-3 is outside 0..65535"),
    ('[1, 2]', "AttributeError"),
    ('{"classes": [{"amos_id": 6}]}', "KeyError"),
    ("[" * 100_000 + "]" * 100_000, "nested deeper"),
])
def test_what_is_not_a_mapping_of_label_values_is_refused(tmp_path, text, phrase):
    path = tmp_path / "mapping.json"
    path.write_text(text)
    with pytest.raises(InputError, match="is not a JSON object of label values") as info:
        read_label_mapping(path)
    assert phrase in str(info.value) and str(path) in str(info.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(InputError, match="cannot be read .*check the path"):
        read_label_mapping(tmp_path / "nowhere.json")
