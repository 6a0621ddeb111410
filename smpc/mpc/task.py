"""What one MPyC session computes: the task file a party hands its session process.

A computing party never imports MPyC in-process (MPyC parses ``sys.argv`` on
import and keeps a global runtime, docs/architecture.md): for each job it writes a
:class:`SessionTask` as JSON and starts ``python -m smpc.mpc.session``. This
module holds the schema both sides share and reads a task's share files, and nothing
that imports MPyC.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from smpc.core.field import PrimeField, expand, field_for, mpyc_modulus


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecType(_Strict):
    """An MPyC secure type: ``SecInt(l[, p])`` or ``SecFxp(l, f[, p])``."""

    kind: Literal["int", "fxp"]
    bit_length: int = Field(gt=0)
    frac_bits: int = Field(default=0, ge=0)
    prime: int | None = None  # a custom modulus, as ``mpc.SecInt(l, p=...)``

    @model_validator(mode="after")
    def _consistent(self) -> SecType:
        if self.kind == "int" and self.frac_bits:
            raise ValueError("a secure integer type has no fractional bits")
        needed = self.bit_length + self.frac_bits + 31  # l + f + k + 1 with MPyC's k = 30
        if self.prime is not None and self.prime.bit_length() <= needed:
            raise ValueError(
                f"prime of {self.prime.bit_length()} bits is too small for {self.bit_length}-bit "
                f"values with {self.frac_bits} fractional bits (MPyC needs more than l+f+31 bits)"
            )
        return self

    @property
    def modulus(self) -> int:
        if self.prime is not None:
            return self.prime
        return mpyc_modulus(self.bit_length, self.frac_bits)

    @property
    def field(self):
        return field_for(self.modulus)


class ShareRef(_Strict):
    """One site's stored share of one input: the decrypted envelope body on disk."""

    site: str
    path: Path
    seed: bool = False


class TaskInput(_Strict):
    name: str
    shape: tuple[int, ...]
    shares: list[ShareRef] = Field(min_length=1)


class SessionTask(_Strict):
    """Everything a session process needs besides its MPyC command line."""

    job: str
    party: int = Field(ge=0)
    sectype: SecType
    inputs: list[TaskInput] = Field(default_factory=list)
    # The protocol whose session hook runs the task, and which of its steps: a linear
    # "sum" opens every input's sum; "noise" opens nothing and returns this party's
    # shares of the dp noise all parties input (deliver: analyst, see smpc.core.dp).
    protocol: str = "sum"
    step: str = "sum"
    # What the protocol's session hook reads besides the inputs, in the protocol's own
    # schema (a GWAS scan's pooled files and tests, a Newton round's): the protocol
    # validates it, this layer does not know it.
    payload: dict[str, Any] = Field(default_factory=dict)
    noise_mu: float = Field(default=0.0, ge=0)  # Skellam parameter each party draws
    noised: list[str] = Field(default_factory=list)  # inputs that get the noise
    # Shamir shares open with MPyC's output(); additive shares (run with -T 0) are
    # opened by exchanging every party's summed share over the MPyC links.
    scheme: Literal["shamir", "additive"] = "shamir"
    # The parties' names in index order, for messages naming a missing or lost peer
    # (set by the party daemon; without them a peer is named by its index).
    party_names: list[str] = Field(default_factory=list)

    def party_called(self, index: int) -> str:
        """``beta``, or ``index 1`` when the names are not known."""
        return self.party_names[index] if index < len(self.party_names) else f"index {index}"

    def party_name(self, index: int) -> str:
        """``beta (index 1)``, or ``index 1`` when the names are not known."""
        if index < len(self.party_names):
            return f"{self.party_names[index]} (index {index})"
        return f"index {index}"

    def write(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2))

    @classmethod
    def read(cls, path: Path) -> SessionTask:
        return cls.model_validate_json(path.read_text())


class SessionError(Exception):
    """The session cannot complete; the message says why."""


def load_input(spec: TaskInput, field: PrimeField) -> np.ndarray:
    """Sum one input's shares over all sites, locally, in the field."""
    count = int(np.prod(spec.shape, dtype=np.int64))
    total: np.ndarray | None = None
    for ref in spec.shares:
        body = ref.path.read_bytes()
        if ref.seed:
            share = expand(field, body, count).reshape(spec.shape)
        else:
            expected = count * field.element_size
            if len(body) != expected:
                raise SessionError(
                    f"share of {spec.name!r} from site {ref.site!r} has {len(body)} bytes, "
                    f"expected {expected} for shape {spec.shape}"
                )
            share = field.from_bytes(body, spec.shape)
        total = share.copy() if total is None else field.add(total, share)
    if total is None:
        raise SessionError(f"input {spec.name!r} has no shares")
    return total
