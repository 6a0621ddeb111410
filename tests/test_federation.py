"""The federation file: the example loads, and every broken variant names its field."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from smpc.config.federation import (
    Federation,
    PortRange,
    load_federation,
    parse_federation,
)
from smpc.errors import UserError

EXAMPLE = Path(__file__).resolve().parent.parent / "parties" / "federation.yaml"

BASE: dict[str, Any] = {
    "name": "test",
    "threshold": 1,
    "broker": {"host": "127.0.0.1", "port": 8883},
    "parties": [
        {"name": "alpha", "host": "127.0.0.1", "mpyc_ports": "14000-14049"},
        {"name": "beta", "host": "127.0.0.1", "mpyc_ports": "14100-14149"},
        {"name": "gamma", "host": "127.0.0.1", "mpyc_ports": "14200-14249"},
    ],
    "sites": [{"name": "oslo"}, {"name": "bergen"}],
    "analysts": [{"name": "analyst"}],
}


def write(tmp_path: Path, data: Any, name: str = "federation.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def variant(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    change(data)
    return data


def test_example_file_loads() -> None:
    fed = load_federation(EXAMPLE)
    assert fed.name == "example"
    assert fed.threshold == 1
    assert fed.party_names == ("alpha", "beta", "gamma")
    assert fed.site_names == ("oslo", "bergen", "tromso")
    assert fed.analyst_names == ("analyst",)
    assert [fed.party_index(n) for n in fed.party_names] == [0, 1, 2]
    assert fed.parties[1].mpyc_ports == PortRange(14100, 14149)
    assert (fed.broker.host, fed.broker.port) == ("127.0.0.1", 8883)
    assert fed.role("oslo") == "site" and fed.role("beta") == "party"


def test_helpers() -> None:
    fed = parse_federation(BASE)
    assert fed.participants[0] == ("alpha", "party")
    assert fed.participants[-1] == ("analyst", "analyst")
    assert fed.party("gamma").mpyc_ports.low == 14200
    with pytest.raises(UserError, match="no computing party 'oslo'"):
        fed.party_index("oslo")
    with pytest.raises(UserError, match="not a participant"):
        fed.role("nobody")


def test_list_port_range_and_defaults(tmp_path: Path) -> None:
    def change(d: dict[str, Any]) -> None:
        d["parties"][0]["mpyc_ports"] = [15000, 15009]
        del d["sites"], d["analysts"]
        d["broker"] = {"host": "broker.example.org"}

    fed = load_federation(write(tmp_path, variant(change)))
    ports = fed.parties[0].mpyc_ports
    assert (ports.low, ports.high, len(ports)) == (15000, 15009, 10)
    assert list(ports)[:2] == [15000, 15001] and 15009 in ports and 15010 not in ports
    assert fed.broker.port == 8883
    assert fed.sites == [] and fed.analysts == []
    assert fed.model_dump(mode="json")["parties"][0]["mpyc_ports"] == "15000-15009"


def test_same_ports_on_different_hosts_are_fine() -> None:
    def change(d: dict[str, Any]) -> None:
        for i, party in enumerate(d["parties"]):
            party["host"] = f"10.0.0.{i + 1}"
            party["mpyc_ports"] = "14000-14049"

    assert len(parse_federation(variant(change)).parties) == 3


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change that sets the value at a dotted path (list positions as numbers)."""

    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return change


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[last]

    return change


BROKEN: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    # (id, change, field path named in the message, words of the problem)
    ("threshold-equals-n", _set("threshold", 3), "threshold", "below the number"),
    ("threshold-above-n", _set("threshold", 7), "threshold", "below the number"),
    ("threshold-negative", _set("threshold", -1), "threshold", "greater than or equal to 0"),
    ("threshold-string", _set("threshold", "1"), "threshold", "valid integer"),
    ("threshold-missing", _delete("threshold"), "threshold", "required"),
    ("one-party", _set("parties", BASE["parties"][:1]), "parties", "at least 2"),
    ("name-uppercase", _set("parties.1.name", "Beta"), "parties.1.name", "invalid name"),
    ("name-too-long", _set("sites.0.name", "a" * 64), "sites.0.name", "invalid name"),
    ("name-slash", _set("sites.1.name", "a/b"), "sites.1.name", "invalid name"),
    ("name-mqtt-wildcard", _set("analysts.0.name", "x+"), "analysts.0.name", "invalid name"),
    ("name-boolean", _set("sites.0.name", False), "sites.0.name", "quote it"),
    ("name-reserved", _set("sites.0.name", "broker"), "sites.0.name", "reserved"),
    ("name-dup-party-site", _set("sites.1.name", "beta"), "sites.1.name", "already used"),
    ("name-dup-parties", _set("parties.2.name", "alpha"), "parties.2.name", "already used"),
    ("name-dup-analyst", _set("analysts.0.name", "oslo"), "analysts.0.name", "already used"),
    ("federation-name", _set("name", "My Federation"), "name", "invalid name"),
    (
        "ports-empty",
        _set("parties.1.mpyc_ports", "14100-14000"),
        "parties.1.mpyc_ports",
        "port range 14100-14000 is empty (low > high)",
    ),
    ("ports-low", _set("parties.0.mpyc_ports", "80-90"), "parties.0.mpyc_ports", "outside"),
    ("ports-high", _set("parties.0.mpyc_ports", [65000, 65536]), "parties.0.mpyc_ports", "outside"),
    ("ports-text", _set("parties.0.mpyc_ports", "many"), "parties.0.mpyc_ports", '"LO-HI"'),
    ("ports-single", _set("parties.0.mpyc_ports", 14000), "parties.0.mpyc_ports", '"LO-HI"'),
    ("ports-3-list", _set("parties.0.mpyc_ports", [1, 2, 3]), "parties.0.mpyc_ports", '"LO-HI"'),
    (
        "ports-overlap",
        _set("parties.2.mpyc_ports", "14149-14160"),
        "parties.2.mpyc_ports",
        "overlaps",
    ),
    (
        "ports-overlap-loopback-alias",
        _set("parties.1", {"name": "beta", "host": "localhost", "mpyc_ports": "14000-14000"}),
        "parties.1.mpyc_ports",
        "overlaps parties.0.mpyc_ports",
    ),
    ("broker-port-zero", _set("broker.port", 0), "broker.port", "greater than or equal to 1"),
    ("broker-port-high", _set("broker.port", 65536), "broker.port", "less than or equal to 65535"),
    ("broker-port-in-range", _set("broker.port", 14100), "broker.port", "inside parties.1"),
    ("broker-host", _set("broker.host", "bad host"), "broker.host", "invalid host"),
    ("broker-missing", _delete("broker"), "broker", "required"),
    ("party-host-missing", _delete("parties.0.host"), "parties.0.host", "required"),
    ("unknown-top-key", _set("treshold", 1), "treshold", "unknown key"),
    ("unknown-party-key", _set("parties.0.port", 1), "parties.0.port", "allowed here: name, host"),
    ("sites-not-list", _set("sites", "oslo"), "sites", "valid list"),
]


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [case[1:] for case in BROKEN],
    ids=[case[0] for case in BROKEN],
)
def test_broken_variant_names_field(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], field: str, problem: str
) -> None:
    path = write(tmp_path, variant(change))
    with pytest.raises(UserError) as info:
        load_federation(path)
    message = str(info.value)
    assert f"{path}: {field}: " in message, message
    assert problem in message, message


def test_every_problem_gets_its_own_line(tmp_path: Path) -> None:
    def change(d: dict[str, Any]) -> None:
        d["parties"][0]["name"] = "Alpha"
        d["broker"]["port"] = 0
        d["colour"] = "blue"

    path = write(tmp_path, variant(change))
    with pytest.raises(UserError) as info:
        load_federation(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{path}: ") for line in lines)


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "federation.yaml"
    path.write_text("name: x\nparties:\n  - {name: alpha, host: 127.0.0.1\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"federation\.yaml: line \d+, column \d+: invalid YAML"):
        load_federation(path)


def test_duplicate_yaml_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "federation.yaml"
    text = yaml.safe_dump(BASE, sort_keys=False) + "threshold: 2\n"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match="duplicate key 'threshold'"):
        load_federation(path)


@pytest.mark.parametrize(
    ("text", "words"),
    [("- a\n- b\n", "got a list"), ("", "got an empty file"), ("just text\n", "got a string")],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "federation.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=f"top level must be a mapping.*{words}"):
        load_federation(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope\.yaml: file not found"):
        load_federation(tmp_path / "nope.yaml")


def test_model_is_immutable() -> None:
    fed = parse_federation(BASE)
    with pytest.raises(ValueError, match="frozen"):
        fed.threshold = 2  # type: ignore[misc]
    assert isinstance(fed, Federation)


_RANGES = st.integers(1024, 1400).flatmap(
    lambda lo: st.tuples(st.just(lo), st.integers(lo, lo + 100))
)


@given(_RANGES, _RANGES)
def test_port_range_properties(a: tuple[int, int], b: tuple[int, int]) -> None:
    ra, rb = PortRange.parse(f"{a[0]}-{a[1]}"), PortRange.parse(list(b))
    assert len(ra) == a[1] - a[0] + 1
    assert PortRange.parse(str(ra)) == ra
    assert ra.overlaps(rb) == rb.overlaps(ra) == bool(set(range(a[0], a[1] + 1)) & set(rb))
