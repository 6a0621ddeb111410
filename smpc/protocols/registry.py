"""The registry of protocol families, and reading a spec into its family's typed model.

Adding a protocol is one package under ``smpc/protocols/`` with a :class:`.base.Protocol`
subclass, plus its line in :data:`PROTOCOLS`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, StrictStr, ValidationError

from smpc.config.federation import Federation, read_yaml_mapping, user_error_from_validation
from smpc.config.spec import SpecFile, common_fields, one_of, suggest_key
from smpc.errors import UserError
from smpc.protocols.base import Protocol
from smpc.protocols.fedavg.protocol import FedavgProtocol, FedavgSpec
from smpc.protocols.gwas.family import GwasProtocol
from smpc.protocols.gwas.spec import GwasSpec
from smpc.protocols.sum.protocol import SumProtocol, SumSpec

PROTOCOLS: dict[str, Protocol] = {
    "sum": SumProtocol(),
    "fedavg": FedavgProtocol(),
    "gwas": GwasProtocol(),
}

Spec = SumSpec | FedavgSpec | GwasSpec
"""A resolved spec of any registered protocol (its ``protocol`` names its model)."""


def protocol(name: str) -> Protocol:
    """The protocol family called ``name``; an unknown name is a UserError."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise UserError(
            f"protocol {name!r} is not one of {', '.join(PROTOCOLS)} (this version's protocols)"
        ) from None


class _RegisteredSpecFile(SpecFile):
    protocol: Annotated[StrictStr, AfterValidator(one_of(tuple(PROTOCOLS)))]


def load_spec(path: str | Path, federation: Federation | None = None) -> Any:
    """Read and validate a spec file; every problem raises a UserError.

    With a ``federation`` the threshold is resolved from it and checked against its number
    of computing parties and sites; without one those checks wait until a federation is
    known (``threshold`` is then None unless the file sets it).
    """
    return parse_spec(read_yaml_mapping(path), str(path), federation)


def parse_spec(
    data: object, source: str | Path = "<spec>", federation: Federation | None = None
) -> Any:
    """Validate already-parsed data (a spec built in code, or one from a job message)."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: a spec must be a mapping of keys to values")
    try:
        raw = _RegisteredSpecFile.model_validate(data)
    except ValidationError as exc:
        error = user_error_from_validation(source, exc, SpecFile)
        raise UserError("\n".join(map(suggest_key, str(error).splitlines()))) from None
    problems: list[tuple[str, str]] = []

    def problem(field: str, message: str) -> None:
        problems.append((field, message))

    family = PROTOCOLS[raw.protocol]
    given = raw.model_fields_set
    optional = set().union(*(p.uses for p in PROTOCOLS.values()))
    for key in sorted(optional - family.uses, key=list(SpecFile.model_fields).index):
        if key in given:
            users = [name for name, p in PROTOCOLS.items() if key in p.uses]
            message = family.unused_problem(key, getattr(raw, key), users)
            if message:
                problem(key, message)
    common = common_fields(
        raw, federation, problem, multiplies=family.multiplies, reveals=family.reveals,
        default_reveal=family.default_reveal,
    )  # fmt: skip
    if raw.reveal is not None and not any(f == "reveal" for f, _ in problems):
        message = family.reveal_problem(list(raw.reveal))
        if message:
            problem("reveal", message)
    own = family.resolve(raw, common, federation, problem)
    if problems:
        raise UserError("\n".join(f"{source}: {field}: {message}" for field, message in problems))
    return family.spec_model(**common, **own)


def spec_from_json(
    text: str | bytes, federation: Federation | None = None, source: str = "<job spec>"
) -> Any:
    """Re-validate a spec carried in a job message (against this party's federation)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{source}: invalid JSON: {exc}") from None
    return parse_spec(data, source, federation)
