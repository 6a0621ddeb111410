"""Reading site inputs: CSV columns, .npy and .npz arrays, with clear errors."""

from __future__ import annotations

import re

import numpy as np
import pytest

from smpc.errors import UserError
from smpc.inputs import parse_assignment, read_input


def test_csv_column_npy_and_npz(tmp_path):
    csv = tmp_path / "site.csv"
    csv.write_text("age,bmi\n40,21.5\n50,30.25\n")
    age = read_input(str(csv), "age")
    assert age.dtype == np.int64 and age.tolist() == [40, 50]
    assert read_input(f"{csv}:bmi", "x").tolist() == [21.5, 30.25]
    np.save(tmp_path / "w.npy", np.eye(2))
    assert read_input(str(tmp_path / "w.npy"), "w").tolist() == [[1, 0], [0, 1]]
    np.savez(tmp_path / "m.npz", layer=np.ones(3), other=np.zeros(1))
    assert read_input(str(tmp_path / "m.npz"), "layer").tolist() == [1, 1, 1]
    assert read_input(f"{tmp_path / 'm.npz'}:other", "x").tolist() == [0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("age\n40\n\n", None),
        ("age\n40\nabc\n", "row 3, column 'age': 'abc' is not a finite number"),
        ("age\n40\nnan\n", "row 3, column 'age': 'nan' is not a finite number"),
        ("age\n40\ninf\n", "row 3, column 'age': 'inf' is not a finite number"),
        ("age,bmi\n40,\n", None),
        ("bmi\n1\n", "no column 'age' (columns: bmi)"),
    ],
)
def test_bad_csv_cells_name_row_and_column(tmp_path, content, message):
    path = tmp_path / "site.csv"
    path.write_text(content)
    if message is None:  # a blank line is no row; an empty cell is refused
        if content.startswith("age,bmi"):
            with pytest.raises(UserError, match="row 2, column 'bmi': empty"):
                read_input(f"{path}:bmi", "bmi")
        else:
            assert read_input(str(path), "age").tolist() == [40]
        return
    with pytest.raises(UserError, match=re.escape(message)):
        read_input(str(path), "age")


def test_missing_files_and_bad_assignments(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_input(str(tmp_path / "nope.csv"), "x")
    (tmp_path / "a.txt").write_text("1")
    with pytest.raises(UserError, match=r"not a \.npy, \.npz or \.csv"):
        read_input(str(tmp_path / "a.txt"), "x")
    np.savez(tmp_path / "m.npz", a=np.ones(1))
    with pytest.raises(UserError, match="has no array 'b'"):
        read_input(str(tmp_path / "m.npz"), "b")
    assert parse_assignment("age=data.csv:age") == ("age", "data.csv:age")
    with pytest.raises(UserError, match="NAME=PATH"):
        parse_assignment("age")
