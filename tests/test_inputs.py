"""Reading site inputs: CSV columns, .npy and .npz arrays, with clear errors."""

from __future__ import annotations

import re

import numpy as np
import pytest

from smpc.errors import UserError
from smpc.io.inputs import parse_assignment, read_input


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


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"age,bmi\n40,1\n4\xe9,2\n", "not UTF-8 text: byte 0xe9 at offset 14 (row 3); save it as"),
        (b"age,bmi\n1e308,1\n", "row 2, column 'age': 1e+308 exceeds the bound |x| < 2^30"),
        (b"age,bmi\n40,1\n-inf,2\n", "row 3, column 'age': '-inf' is not a finite number"),
        (b"age,bmi\n40,1\nNaN,2\n", "row 3, column 'age': 'NaN' is not a finite number"),
    ],
)
def test_encoding_and_range_errors_name_file_and_row(tmp_path, content, message):
    path = tmp_path / "site.csv"
    path.write_bytes(content)
    with pytest.raises(UserError, match=re.escape(f"{path}: ")) as err:
        read_input(f"{path}:age", "age", bound=2.0**30)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_byte_order_mark_is_dropped(tmp_path):
    path = tmp_path / "site.csv"
    path.write_bytes(b"\xef\xbb\xbfage,bmi\n40,1\n")
    assert read_input(f"{path}:age", "age").tolist() == [40]


def test_npy_values_beyond_the_bound_name_the_index(tmp_path):
    np.save(tmp_path / "x.npy", np.array([1.0, 2.0**31]))
    with pytest.raises(UserError, match=r"x.npy: index \(1,\): 2.14748e\+09 exceeds the bound"):
        read_input(str(tmp_path / "x.npy"), "x", bound=2.0**30)


def test_truncated_bed_and_short_fam_name_the_right_file(tmp_path):
    import shutil
    from pathlib import Path

    from smpc.protocols.gwas.genotypes import open_site

    source = Path(__file__).resolve().parents[1] / "smpc" / "data" / "gwas"
    for case in ("bed", "fam"):
        (tmp_path / case).mkdir()
        for ext in ("bed", "bim", "fam"):
            shutil.copy(source / f"oslo.{ext}", tmp_path / case / f"oslo.{ext}")
    bed = tmp_path / "bed" / "oslo.bed"
    bed.write_bytes(bed.read_bytes()[:-100])
    fam = tmp_path / "fam" / "oslo.fam"
    fam.write_text("".join(fam.read_text().splitlines(keepends=True)[:-5]))
    with pytest.raises(UserError, match=re.escape(f"{bed}: 67238 bytes, expected 67338")):
        open_site(tmp_path / "bed" / "oslo")
    with pytest.raises(UserError, match=re.escape(f"{fam}: 262 samples, but")):
        open_site(tmp_path / "fam" / "oslo")
