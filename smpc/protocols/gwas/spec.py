"""A GWAS's typed spec and job payload (``protocol: gwas``)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from smpc.config.spec import Filters, SpecBase
from smpc.protocols.base import Payload
from smpc.wire.messages import MAX_MODEL_BYTES, decode_model


class GwasSpec(SpecBase):
    """A resolved ``protocol: gwas`` spec: PLINK 1.9's tests, phenotype, covariates, filters."""

    protocol: Literal["gwas"]
    tests: tuple[str, ...]
    pheno: str | None = None
    covar: tuple[str, ...] = ()
    filters: Filters = Filters()

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["filters"] = self.filters.model_dump(exclude_none=True)
        return data


class GwasPayload(Payload):
    """Which job of a GWAS run this is, and the variants it names (public).

    ``variants``: base64 of an .npz (:func:`smpc.wire.messages.encode_model`): the analysed
    variants' IDs for a ``scan`` after ``mind``; for a ``newton`` round their IDs, alleles
    and current coefficients (:func:`.logistic.round_model`).
    """

    stage: Literal["align", "scan", "newton"] = "scan"
    round: int = Field(default=0, ge=0)
    variants: str | None = Field(default=None, max_length=4 * ((MAX_MODEL_BYTES + 2) // 3))

    def arrays(self) -> dict[str, np.ndarray] | None:
        return None if self.variants is None else decode_model(self.variants)
