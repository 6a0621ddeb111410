"""Protocol spec files: the examples load, defaults are filled, every broken spec says why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from smpc.config.federation import Federation, load_federation, parse_federation
from smpc.config.spec import DP, Encoding, Filters
from smpc.errors import UserError
from smpc.protocols.gwas.spec import GwasSpec
from smpc.protocols.registry import load_spec, parse_spec, protocol, spec_from_json
from smpc.protocols.sum.protocol import SumSpec

ROOT = Path(__file__).resolve().parent.parent
PROTOCOLS = ROOT / "protocols"
EXAMPLES = sorted(PROTOCOLS.glob("*.yaml"))


def federation(parties: int = 3, threshold: int = 1, sites: int = 3) -> Federation:
    return parse_federation(
        {
            "name": "test",
            "threshold": threshold,
            "broker": {"host": "127.0.0.1", "port": 8883},
            "parties": [
                {"name": f"p{i}", "host": "127.0.0.1", "mpyc_ports": f"{14000 + 100 * i}-14{i}49"}
                for i in range(parties)
            ],
            "sites": [{"name": f"s{i}"} for i in range(sites)],
        }
    )


FED = federation()

COHORT = """\
name: cohort
protocol: sum
inputs: [age, bmi]      # columns of a site's .csv (header row), or arrays of its .npz/.npy
"""
ROUND = """\
name: round
protocol: fedavg        # a site's .npz holds named arrays plus a scalar num_examples
"""
CC = """\
name: cc
protocol: gwas
tests: [assoc, model, hardy, freq, missing, logistic]
covar: [AGE, SEX2]
"""
QT = """\
name: qt
protocol: gwas
tests: [linear]
pheno: QT
covar: [AGE, SEX2]
"""


def write(tmp_path: Path, text: str, name: str = "cohort.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- the documented examples load, with defaults filled -------------------------------


def test_cohort_loads_with_defaults(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, COHORT), FED)
    assert isinstance(spec, SumSpec)
    assert (spec.name, spec.protocol, spec.inputs) == ("cohort", "sum", ("age", "bmi"))
    assert spec.scheme == "shamir" and spec.threshold == 1
    assert spec.min_sites == 2
    assert spec.reveal == ("sum", "count", "mean")
    assert spec.deliver == "analyst" and spec.compact is True
    assert spec.encoding == Encoding(frac_bits=24, int_bits=30)
    assert (spec.round_timeout, spec.timeout) == (300.0, 600.0)
    assert spec.dp is None
    # a sum's spec has only its own fields: no rounds, no GWAS fields
    assert not {"rounds", "tests", "pheno", "covar", "filters"} & set(type(spec).model_fields)
    assert not protocol("sum").multiplies


def test_round_loads_with_defaults(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, ROUND, "round.yaml"), FED)
    assert spec.protocol == "fedavg"
    assert spec.inputs is None  # every array of the site's .npz except num_examples
    assert spec.reveal == ("model",)
    assert spec.threshold == 1 and spec.rounds == 1


def test_gwas_examples_load(tmp_path: Path) -> None:
    cc = load_spec(write(tmp_path, CC, "cc.yaml"), FED)
    assert cc.tests == ("assoc", "model", "hardy", "freq", "missing", "logistic")
    assert cc.covar == ("AGE", "SEX2") and cc.pheno is None
    assert cc.reveal == ("statistics",) and cc.filters == Filters()
    assert isinstance(cc, GwasSpec) and protocol("gwas").multiplies
    assert not {"inputs", "dp", "rounds"} & set(type(cc).model_fields)
    qt = load_spec(write(tmp_path, QT, "qt.yaml"), FED)
    assert (qt.tests, qt.pheno, qt.covar) == (("linear",), "QT", ("AGE", "SEX2"))


def test_gwas_default_tests() -> None:
    assert parse_spec({"name": "g", "protocol": "gwas"}, "g.yaml", FED).tests == ("assoc",)


def test_without_federation_threshold_stays_open(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, COHORT))
    assert spec.threshold is None
    assert "threshold" not in spec.to_dict()
    # the federation's number of parties is unknown: a gwas threshold is not checked yet
    assert parse_spec({"name": "g", "protocol": "gwas", "threshold": 2}).threshold == 2


def test_additive_threshold_is_n_minus_1() -> None:
    data = {"name": "c", "protocol": "sum", "inputs": ["age"], "scheme": "additive"}
    assert parse_spec(data, "c.yaml", FED).threshold == 2
    assert parse_spec(data, "c.yaml", federation(parties=5, threshold=2)).threshold == 4
    assert parse_spec({**data, "threshold": 2}, "c.yaml", FED).threshold == 2


def test_threshold_from_spec_overrides_federation() -> None:
    fed = federation(parties=5, threshold=1)
    data = {"name": "g", "protocol": "gwas", "threshold": 2}
    assert parse_spec(data, "g.yaml", fed).threshold == 2


def test_explicit_values_kept() -> None:
    data = {
        "name": "c",
        "protocol": "sum",
        "inputs": ["age", "bp.sys"],
        "reveal": ["mean", "count"],
        "deliver": "parties",
        "compact": False,
        "encoding": {"frac_bits": 16},
        "min_sites": 3,
        "timeout": 1200,
        "round_timeout": 0.5,
        "dp": {"epsilon": 1, "clip": 200.0},
    }
    spec = parse_spec(data, "c.yaml", FED)
    assert spec.reveal == ("count", "mean")  # canonical order
    assert parse_spec({**data, "reveal": "mean"}, "c.yaml", FED).reveal == ("mean",)
    assert spec.deliver == "parties" and spec.compact is False
    assert spec.encoding == Encoding(frac_bits=16, int_bits=30)
    assert (spec.min_sites, spec.timeout, spec.round_timeout) == (3, 1200.0, 0.5)
    assert spec.dp == DP(epsilon=1.0, clip=200.0) and spec.dp.delta is None
    fedavg = {"name": "r", "protocol": "fedavg", "inputs": ["layer1.weight"], "rounds": 5}
    spec = parse_spec({**fedavg, "dp": {"epsilon": 2.0, "delta": 1e-5, "clip": 1.0}}, "r", FED)
    assert spec.rounds == 5 and spec.inputs == ("layer1.weight",)
    assert spec.dp is not None and spec.dp.delta == 1e-5
    gwas = {"name": "g", "protocol": "gwas", "reveal": "aggregates"}
    spec = parse_spec({**gwas, "filters": {"maf": 0.01, "hwe": 1e-6, "geno": 0}}, "g", FED)
    assert spec.reveal == ("aggregates",)
    assert spec.filters == Filters(maf=0.01, hwe=1e-6, geno=0.0)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_loads_against_the_example_federation(path: Path) -> None:
    fed = load_federation(ROOT / "parties" / "federation.yaml")
    spec = load_spec(path, fed)
    assert spec.name == path.stem
    assert spec.threshold is not None
    assert path.read_text(encoding="utf-8").startswith("# "), "a comment header says what it does"
    assert f"smpc run protocols/{path.name}" in path.read_text(encoding="utf-8")


def test_examples_are_all_there() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"cohort.yaml", "cohort-additive.yaml", "round.yaml", "cc.yaml", "qt.yaml"} <= names


def test_cohort_example_names_demo_columns() -> None:
    spec = load_spec(PROTOCOLS / "cohort.yaml", FED)
    for csv in (ROOT / "smpc" / "data" / "demo").glob("*.csv"):
        header = csv.read_text(encoding="utf-8").splitlines()[0].split(",")
        assert spec.inputs is not None and set(spec.inputs) <= set(header)
    additive = load_spec(PROTOCOLS / "cohort-additive.yaml", FED)
    assert additive.scheme == "additive" and additive.threshold == 2
    assert additive.inputs == spec.inputs


# --- canonical form -------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_canonical_form_round_trips(path: Path) -> None:
    spec = load_spec(path, FED)
    text = spec.to_json()
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    assert spec_from_json(text, FED) == spec
    assert parse_spec(spec.to_dict(), "again", FED) == spec
    # the canonical form is itself a valid spec file
    assert parse_spec(yaml.safe_load(yaml.safe_dump(spec.to_dict())), "yaml", FED) == spec


def test_canonical_form_carries_only_the_protocols_fields() -> None:
    data = parse_spec(yaml.safe_load(COHORT), "c", FED).to_dict()
    assert not {"tests", "pheno", "covar", "filters", "dp"} & set(data)
    assert data["threshold"] == 1 and data["encoding"] == {"frac_bits": 24, "int_bits": 30}
    gwas = parse_spec(yaml.safe_load(CC), "c", FED).to_dict()
    assert "inputs" not in gwas and gwas["filters"] == {} and gwas["tests"][0] == "assoc"


def test_from_json_rejects_garbage() -> None:
    with pytest.raises(UserError, match="job: invalid JSON"):
        spec_from_json("{nope", FED, source="job")


def test_spec_is_immutable(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, COHORT), FED)
    with pytest.raises(ValueError, match="frozen"):
        spec.threshold = 2  # type: ignore[misc]


# --- broken specs ---------------------------------------------------------------------

SUM: dict[str, Any] = {"name": "cohort", "protocol": "sum", "inputs": ["age", "bmi"]}
FEDAVG: dict[str, Any] = {"name": "round", "protocol": "fedavg"}
GWAS: dict[str, Any] = {"name": "cc", "protocol": "gwas"}

BROKEN: list[tuple[str, dict[str, Any], Federation | None, str, list[str]]] = [
    # (id, spec, federation, field named in the message, words of the problem and fix)
    ("protocol-typo", {**SUM, "protocol": "summ"}, FED, "protocol",
     ["'summ' is not one of sum, fedavg, gwas", "did you mean 'sum'"]),
    ("protocol-missing", {"name": "x"}, FED, "protocol", ["required"]),
    ("name-missing", {"protocol": "sum", "inputs": ["a"]}, FED, "name", ["required"]),
    ("name-upper", {**SUM, "name": "Cohort"}, FED, "name", ["invalid name", "a-z"]),
    ("name-space", {**SUM, "name": "my cohort"}, FED, "name", ["invalid name"]),
    ("name-number", {**SUM, "name": 7}, FED, "name", ["valid string", "quote it"]),
    ("unknown-key", {**SUM, "treshold": 1}, FED, "treshold",
     ["unknown key", "did you mean 'threshold'?",
      "allowed here: name, protocol, inputs, scheme, threshold"]),
    ("unknown-key-far", {**SUM, "colour": "blue"}, FED, "colour",
     ["unknown key (allowed here: name, protocol"]),
    ("unknown-encoding-key", {**SUM, "encoding": {"bits": 3}}, FED, "encoding.bits",
     ["unknown key", "allowed here: frac_bits, int_bits"]),
    ("unknown-dp-key", {**SUM, "dp": {"epsilon": 1, "clip": 1, "sigma": 2}}, FED, "dp.sigma",
     ["unknown key", "epsilon, delta, clip"]),
    ("sum-no-inputs", {"name": "c", "protocol": "sum"}, FED, "inputs",
     ["required for protocol sum", "inputs: [age, bmi]"]),
    ("sum-empty-inputs", {**SUM, "inputs": []}, FED, "inputs", ["at least one"]),
    ("inputs-dup", {**SUM, "inputs": ["age", "age"]}, FED, "inputs",
     ["'age' is listed twice", "once"]),
    ("inputs-bad-name", {**SUM, "inputs": ["age", "Body Mass"]}, FED, "inputs.1",
     ["invalid input name 'Body Mass'"]),
    ("inputs-not-list", {**SUM, "inputs": "age"}, FED, "inputs", ["valid list"]),
    ("fedavg-num-examples", {**FEDAVG, "inputs": ["w", "num_examples"]}, FED, "inputs",
     ["num_examples is each site's weight", "remove it"]),
    ("fedavg-empty-inputs", {**FEDAVG, "inputs": []}, FED, "inputs", ["drop inputs"]),
    ("gwas-inputs", {**GWAS, "inputs": ["x"]}, FED, "inputs", ["drop inputs", "pheno"]),
    ("scheme-typo", {**SUM, "scheme": "shamirr"}, FED, "scheme",
     ["'shamirr' is not one of shamir, additive"]),
    ("gwas-additive", {**GWAS, "scheme": "additive"}, FED, "scheme",
     ["gwas multiplies shares; use scheme: shamir"]),
    ("threshold-gwas-2t+1", {**GWAS, "threshold": 2}, FED, "threshold",
     ["2 needs at least 5 computing parties for protocol gwas, federation has 3",
      "set threshold: 1 or lower"]),
    ("threshold-gwas-federation-default", GWAS, federation(parties=4, threshold=2), "threshold",
     ["2 (the federation's default) needs at least 5", "federation has 4"]),
    ("threshold-at-n", {**SUM, "threshold": 3}, FED, "threshold",
     ["3 must be below the number of computing parties (3)", "set threshold: 2 or lower"]),
    ("threshold-negative", {**SUM, "threshold": -1}, None, "threshold",
     ["greater than or equal to 0"]),
    ("threshold-string", {**SUM, "threshold": "1"}, FED, "threshold", ["valid integer"]),
    ("additive-other-t", {**SUM, "scheme": "additive", "threshold": 1}, FED, "threshold",
     ["additive sharing always tolerates N-1 = 2", "drop the threshold key"]),
    ("min-sites-zero", {**SUM, "min_sites": 0}, FED, "min_sites", ["greater than or equal to 1"]),
    ("min-sites-too-many", {**SUM, "min_sites": 4}, FED, "min_sites",
     ["4 is more than the 3 sites", "lower min_sites or add sites"]),
    ("reveal-sum-bad", {**SUM, "reveal": ["sum", "median"]}, FED, "reveal",
     ["'median'", "can reveal only sum, count, mean"]),
    ("reveal-number", {**SUM, "reveal": 5}, FED, "reveal", ["valid list"]),
    ("reveal-empty", {**SUM, "reveal": []}, FED, "reveal", ["nothing would be opened"]),
    ("reveal-dup", {**SUM, "reveal": ["sum", "sum"]}, FED, "reveal", ["listed twice"]),
    ("reveal-fedavg", {**FEDAVG, "reveal": ["sum"]}, FED, "reveal", ["can reveal only model"]),
    ("reveal-gwas-bad", {**GWAS, "reveal": "genotypes"}, FED, "reveal",
     ["can reveal only statistics, aggregates"]),
    ("reveal-gwas-both", {**GWAS, "reveal": ["statistics", "aggregates"]}, FED, "reveal",
     ["choose one"]),
    ("deliver-typo", {**SUM, "deliver": "analysts"}, FED, "deliver",
     ["'analysts' is not one of analyst, parties", "did you mean 'analyst'"]),
    ("compact-string", {**SUM, "compact": "yes"}, FED, "compact", ["valid boolean"]),
    ("encoding-too-wide", {**SUM, "encoding": {"frac_bits": 30, "int_bits": 30}}, FED,
     "encoding", ["30 + 30 = 60 is more than 59", "GF(2^61-1)", "lower int_bits or frac_bits"]),
    ("encoding-too-many-sites", {**SUM, "encoding": {"frac_bits": 28, "int_bits": 30}},
     federation(sites=5), "encoding",
     ["= 58 lets sums of at most 4 sites", "has 5 sites", "lower int_bits"]),
    ("encoding-negative", {**SUM, "encoding": {"frac_bits": -1}}, FED, "encoding.frac_bits",
     ["greater than or equal to 0"]),
    ("encoding-not-mapping", {**SUM, "encoding": 24}, FED, "encoding", ["valid dictionary"]),
    ("rounds-zero", {**FEDAVG, "rounds": 0}, FED, "rounds", ["greater than or equal to 1"]),
    ("rounds-on-sum", {**SUM, "rounds": 3}, FED, "rounds",
     ["only protocol fedavg runs several rounds", "drop rounds"]),
    ("timeout-zero", {**SUM, "timeout": 0}, FED, "timeout", ["greater than 0"]),
    ("timeout-text", {**SUM, "timeout": "10m"}, FED, "timeout", ["valid number"]),
    ("timeout-inf", {**SUM, "timeout": float("inf")}, FED, "timeout", ["finite"]),
    ("round-timeout-longer", {**FEDAVG, "round_timeout": 900}, FED, "round_timeout",
     ["longer than the whole job's timeout (600 s)", "raise timeout"]),
    ("dp-on-gwas", {**GWAS, "dp": {"epsilon": 1, "clip": 1}}, FED, "dp",
     ["sum and fedavg only", "drop dp"]),
    ("dp-epsilon-zero", {**SUM, "dp": {"epsilon": 0, "clip": 1}}, FED, "dp.epsilon",
     ["greater than 0"]),
    ("dp-delta-one", {**SUM, "dp": {"epsilon": 1, "delta": 1, "clip": 1}}, FED, "dp.delta",
     ["less than 1"]),
    ("dp-no-clip", {**FEDAVG, "dp": {"epsilon": 1}}, FED, "dp.clip", ["required"]),
    ("tests-on-sum", {**SUM, "tests": ["assoc"]}, FED, "tests",
     ["only protocol gwas uses tests", "drop it"]),
    ("covar-on-fedavg", {**FEDAVG, "covar": ["AGE"]}, FED, "covar", ["only protocol gwas"]),
    ("tests-typo", {**GWAS, "tests": ["assoc", "logistc"]}, FED, "tests.1",
     ["'logistc' is not one of assoc, model", "did you mean 'logistic'"]),
    ("tests-empty", {**GWAS, "tests": []}, FED, "tests", ["at least one of assoc"]),
    ("tests-linear-and-logistic", {**GWAS, "tests": ["linear", "logistic"]}, FED, "tests",
     ["quantitative", "case/control", "split it into two specs"]),
    ("covar-without-regression", {**GWAS, "covar": ["AGE"]}, FED, "covar",
     ["linear and logistic tests only", "drop covar"]),
    ("covar-dup", {**GWAS, "tests": ["linear"], "covar": ["AGE", "AGE"]}, FED, "covar",
     ["'AGE' is listed twice"]),
    ("pheno-list", {**GWAS, "pheno": ["QT"]}, FED, "pheno", ["valid string"]),
    ("filters-maf", {**GWAS, "filters": {"maf": 0.7}}, FED, "filters.maf",
     ["less than or equal to 0.5"]),
    ("filters-hwe-zero", {**GWAS, "filters": {"hwe": 0}}, FED, "filters.hwe", ["greater than 0"]),
    ("filters-unknown", {**GWAS, "filters": {"mac": 3}}, FED, "filters.mac",
     ["unknown key", "maf, geno, hwe, mind"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "fed", "field", "words"),
    [case[1:] for case in BROKEN],
    ids=[case[0] for case in BROKEN],
)
def test_broken_spec_names_field_and_fix(
    tmp_path: Path, data: dict[str, Any], fed: Federation | None, field: str, words: list[str]
) -> None:
    path = tmp_path / "cohort.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_spec(path, fed)
    message = str(info.value)
    assert f"{path}: {field}: " in message, message
    for word in words:
        assert word in message, message


def test_every_problem_gets_its_own_line() -> None:
    data = {**GWAS, "scheme": "additive", "inputs": ["x"], "tests": ["linear", "model"]}
    with pytest.raises(UserError) as info:
        parse_spec(data, "cc.yaml", FED)
    lines = str(info.value).splitlines()
    assert len(lines) == 3, lines
    assert all(line.startswith("cc.yaml: ") for line in lines)


def test_yaml_problems_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope\.yaml: file not found"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="duplicate key 'protocol'"):
        load_spec(write(tmp_path, COHORT + "protocol: gwas\n"))
    with pytest.raises(UserError, match="top level must be a mapping"):
        load_spec(write(tmp_path, "- sum\n"))
    with pytest.raises(UserError, match="<job>: a spec must be a mapping"):
        parse_spec(["sum"], "<job>")
