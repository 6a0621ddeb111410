"""Schema of the federation file (``parties/federation.yaml``).

A federation file says who takes part and where they are::

    name: example
    threshold: 1                 # default collusion threshold t for jobs
    broker: {host: 127.0.0.1, port: 8883}
    parties:                     # computing parties; list order = MPyC party index 0..N-1
      - {name: alpha, host: 127.0.0.1, mpyc_ports: "14000-14049"}
      - {name: beta,  host: 127.0.0.1, mpyc_ports: "14100-14149"}
      - {name: gamma, host: 127.0.0.1, mpyc_ports: "14200-14249"}
    sites: [{name: oslo}, {name: bergen}, {name: tromso}]
    analysts: [{name: analyst}]

Decisions worth knowing:

- The order of ``parties`` is the MPyC party index, and the index is written into each
  party's MPyC certificate (``MPyC party {i}``): reordering parties after ``smpc keys
  init`` needs new party certificates (``smpc keys init`` refuses and says so).
- Names become MQTT topic levels, file names and certificate common names, so they are
  restricted to ``[a-z0-9][a-z0-9_-]{0,62}`` and must be unique across parties, sites
  and analysts. ``broker`` is reserved (it is the broker's kit directory).
- ``mpyc_ports`` is a range because a party runs one MPyC session per job slice in
  parallel and each session listens on its own port; the length of the range bounds the
  number of concurrent sessions of that party. Ranges of parties on the same host (the
  loopback names ``localhost``, ``127.0.0.1`` and ``::1`` count as one host) must not
  overlap each other or the broker port.
- ``threshold`` is required: it is the security parameter, so it is stated, not implied.
  ``0 <= t < N`` is checked here; whether a protocol can run with it (Shamir protocols
  with multiplications need ``N >= 2t + 1``, linear ones tolerate ``t = N - 1``) is
  checked per job, where the protocol is known.
- Integers are strict: ``threshold: "1"`` is an error, not silently converted.

Every problem is reported as a :class:`smpc.errors.UserError` whose message names the
file, the field path (dots, list positions from 0) and the problem, one line per error.
"""

from __future__ import annotations

import ipaddress
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema

from smpc.config.yamlfile import read_yaml_mapping
from smpc.errors import UserError
from smpc.names import NAME_PATTERN

Role = Literal["party", "site", "analyst"]
"""Role of a participant; also the OU of its federation-CA client certificate."""

RESERVED_NAMES = frozenset({"broker"})
MIN_MPYC_PORT = 1024
MAX_PORT = 65535

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PORT_RANGE_TEXT = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")


# --- field types ----------------------------------------------------------------------


def _check_name(value: str) -> str:
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError(
            f"invalid name {value!r}: use 1-63 characters from a-z, 0-9, '_' and '-', "
            "starting with a letter or digit (names become MQTT topics and file names)"
        )
    return value


def _check_participant_name(value: str) -> str:
    _check_name(value)
    if value in RESERVED_NAMES:
        raise ValueError(f"the name {value!r} is reserved (kits/{value} holds the broker's kit)")
    return value


def _check_host(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return value
    labels = value.split(".")
    if len(value) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"invalid host {value!r}: expected a host name or an IP address")
    return value


Name = Annotated[StrictStr, AfterValidator(_check_name)]
ParticipantName = Annotated[StrictStr, AfterValidator(_check_participant_name)]
Host = Annotated[StrictStr, AfterValidator(_check_host)]


@dataclass(frozen=True)
class PortRange:
    """An inclusive range of TCP ports, written ``"LO-HI"`` or ``[LO, HI]``.

    Iterating yields every port; ``len`` is the number of ports, i.e. how many MPyC
    sessions the party can listen for at the same time.
    """

    low: int
    high: int

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError(f"port range {self.low}-{self.high} is empty (low > high)")
        if self.low < MIN_MPYC_PORT or self.high > MAX_PORT:
            raise ValueError(
                f"port range {self.low}-{self.high} is outside {MIN_MPYC_PORT}-{MAX_PORT} "
                "(ports below 1024 need root)"
            )

    @classmethod
    def parse(cls, value: object) -> PortRange:
        """Build a range from ``"LO-HI"``, ``[LO, HI]`` or a PortRange; ValueError if not."""
        if isinstance(value, PortRange):
            return value
        bounds: tuple[object, object] | None = None
        if isinstance(value, str):
            match = _PORT_RANGE_TEXT.fullmatch(value)
            if match:
                bounds = (int(match.group(1)), int(match.group(2)))
        elif isinstance(value, list | tuple) and len(value) == 2:
            bounds = (value[0], value[1])
        if bounds is None or not all(
            isinstance(b, int) and not isinstance(b, bool) for b in bounds
        ):
            raise ValueError(
                f'expected a port range "LO-HI" such as "14000-14049" or a list [LO, HI] '
                f"(got {value!r})"
            )
        low, high = bounds
        assert isinstance(low, int) and isinstance(high, int)  # for the type checker
        return cls(low, high)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.low, self.high + 1))

    def __len__(self) -> int:
        return self.high - self.low + 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    def overlaps(self, other: PortRange) -> bool:
        """True if the two ranges share at least one port."""
        return self.low <= other.high and other.low <= self.high

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.parse,
            serialization=core_schema.plain_serializer_function_ser_schema(str, when_used="json"),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        return {"type": "string", "pattern": r"^\d+-\d+$", "examples": ["14000-14049"]}


# --- models ---------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Broker(_Model):
    """The MQTT broker every participant connects to with TLS."""

    host: Host
    port: Annotated[StrictInt, Field(ge=1, le=MAX_PORT)] = 8883


class Party(_Model):
    """A computing party: runs MPyC sessions with the other parties."""

    name: ParticipantName
    host: Host
    mpyc_ports: PortRange


class Site(_Model):
    """A data holder (hospital): secret-shares its data to the parties."""

    name: ParticipantName


class Analyst(_Model):
    """Submits jobs and receives results."""

    name: ParticipantName


class _Problems(ValueError):
    """Cross-field problems, each with a location relative to the model.

    A model validator can only raise one exception and pydantic gives it an empty
    location; this carries the real locations to :func:`user_error_from_validation`.
    """

    def __init__(self, problems: list[tuple[tuple[str | int, ...], str]]) -> None:
        super().__init__("; ".join(f"{_dotted(loc)}: {msg}" for loc, msg in problems))
        self.problems = problems


def _host_key(host: str) -> str:
    host = host.lower()
    return "loopback" if host in _LOOPBACK_NAMES else host


class Federation(_Model):
    """Who takes part in a federation, and the default collusion threshold."""

    name: Name
    threshold: Annotated[StrictInt, Field(ge=0)]
    broker: Broker
    parties: list[Party]
    sites: list[Site] = []
    analysts: list[Analyst] = []

    @field_validator("parties")
    @classmethod
    def _at_least_two_parties(cls, parties: list[Party]) -> list[Party]:
        if len(parties) < 2:
            raise ValueError(
                f"at least 2 computing parties are needed (got {len(parties)}): "
                "secret sharing among one party hides nothing"
            )
        return parties

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Federation:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        n = len(self.parties)
        if self.threshold >= n:
            problems.append(
                (
                    ("threshold",),
                    f"threshold {self.threshold} must be below the number of computing parties "
                    f"({n}): privacy needs at least one party outside any coalition of t parties",
                )
            )
        seen: dict[str, str] = {}
        for group in ("parties", "sites", "analysts"):
            for i, member in enumerate(getattr(self, group)):
                where = f"{group}.{i}"
                if member.name in seen:
                    problems.append(
                        (
                            (group, i, "name"),
                            f"name {member.name!r} is already used by {seen[member.name]} "
                            "(names must be unique across parties, sites and analysts)",
                        )
                    )
                else:
                    seen[member.name] = where
        for j, party in enumerate(self.parties):
            for i, earlier in enumerate(self.parties[:j]):
                if _host_key(earlier.host) == _host_key(party.host) and party.mpyc_ports.overlaps(
                    earlier.mpyc_ports
                ):
                    problems.append(
                        (
                            ("parties", j, "mpyc_ports"),
                            f"port range {party.mpyc_ports} overlaps parties.{i}.mpyc_ports "
                            f"({earlier.mpyc_ports}) on the same host {party.host}",
                        )
                    )
            if (
                _host_key(party.host) == _host_key(self.broker.host)
                and self.broker.port in party.mpyc_ports
            ):
                problems.append(
                    (
                        ("broker", "port"),
                        f"port {self.broker.port} is inside parties.{j}.mpyc_ports "
                        f"({party.mpyc_ports}) on the same host {party.host}",
                    )
                )
        if problems:
            raise _Problems(problems)
        return self

    # --- helpers for the other layers ---

    @property
    def party_names(self) -> tuple[str, ...]:
        """Computing parties in MPyC index order."""
        return tuple(p.name for p in self.parties)

    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sites)

    @property
    def analyst_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.analysts)

    @property
    def participants(self) -> tuple[tuple[str, Role], ...]:
        """Every participant as (name, role): parties in index order, then sites, analysts."""
        return (
            *((name, "party") for name in self.party_names),
            *((name, "site") for name in self.site_names),
            *((name, "analyst") for name in self.analyst_names),
        )

    def party_index(self, name: str) -> int:
        """MPyC index of the computing party ``name``; UserError if there is none."""
        try:
            return self.party_names.index(name)
        except ValueError:
            raise UserError(
                f"federation {self.name!r} has no computing party {name!r} "
                f"(parties: {', '.join(self.party_names)})"
            ) from None

    def party(self, name: str) -> Party:
        """The computing party ``name``; UserError if there is none."""
        return self.parties[self.party_index(name)]

    def role(self, name: str) -> Role:
        """Role of participant ``name``; UserError if it is not in the federation."""
        for member, role in self.participants:
            if member == name:
                return role
        raise UserError(f"{name!r} is not a participant of federation {self.name!r}")


# --- loading and error messages -------------------------------------------------------


def load_federation(path: str | Path) -> Federation:
    """Read and validate a federation file; every problem raises a UserError."""
    return parse_federation(read_yaml_mapping(path), source=str(path))


def parse_federation(data: object, source: str = "<federation>") -> Federation:
    """Validate already-parsed data (e.g. built in a test or by ``smpc demo``)."""
    try:
        return Federation.model_validate(data)
    except ValidationError as exc:
        raise user_error_from_validation(source, exc, Federation) from None


Model = TypeVar("Model", bound=BaseModel)


def read_yaml_model(path: str | Path, model: type[Model]) -> Model:
    """A YAML mapping file validated as ``model``; its problems as one :class:`UserError`."""
    try:
        return model.model_validate(read_yaml_mapping(path))
    except ValidationError as exc:
        raise user_error_from_validation(path, exc, model) from None


def user_error_from_validation(
    source: str | Path, exc: ValidationError, model: type[BaseModel] | None = None
) -> UserError:
    """Turn a pydantic ValidationError into one UserError, one line per problem.

    Each line reads ``SOURCE: field.path: problem``. ``model`` (the validated root model)
    lets an unknown key be reported with the keys allowed at that place.
    """
    lines: list[str] = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, _Problems):
            lines.extend(_line(source, loc + sub, msg) for sub, msg in cause.problems)
            continue
        lines.append(_line(source, loc, _message(error, loc, model)))
    return UserError("\n".join(lines))


def _line(source: str | Path, loc: tuple[str | int, ...], message: str) -> str:
    return f"{source}: {_dotted(loc)}: {message}" if loc else f"{source}: {message}"


def _dotted(loc: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _message(error: Any, loc: tuple[str | int, ...], model: type[BaseModel] | None) -> str:
    kind = error["type"]
    value = error.get("input")
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1]) if model else None
        hint = f" (allowed here: {', '.join(allowed)})" if allowed else ""
        return f"unknown key{hint}"
    message: str = error["msg"]
    if kind == "value_error":
        return message.removeprefix("Value error, ")
    message = message[:1].lower() + message[1:]
    if isinstance(value, bool | int | float | str) or value is None:
        message += f" (got {value!r})"
        if kind == "string_type" and (isinstance(value, bool | int | float) or value is None):
            message += (
                "; YAML reads unquoted yes/no/on/off/null and numbers as non-strings: quote it"
            )
    return message


def _allowed_keys(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str] | None:
    """Field names of the model found at ``loc`` below ``model``, if one is there."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, str) and isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part)
            if field is None:
                return None
            current = field.annotation
        elif isinstance(part, int) and typing.get_origin(current) in (list, tuple):
            current = typing.get_args(current)[0]
        else:
            return None
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return None


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated[...] and Optional[...] from a type annotation."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation
