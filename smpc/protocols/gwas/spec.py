"""A GWAS's typed spec and job payload (``protocol: gwas``)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from smpc.config.spec import Filters, Pca, SpecBase
from smpc.protocols.base import Payload
from smpc.wire.messages import MAX_MODEL_BYTES, decode_model


class GwasSpec(SpecBase):
    """A resolved ``protocol: gwas`` spec: PLINK 1.9's tests, phenotype, covariates, filters."""

    protocol: Literal["gwas"]
    tests: tuple[str, ...]
    pheno: str | None = None
    covar: tuple[str, ...] = ()
    filters: Filters = Filters()
    pca: Pca | None = None  # set when the run computes principal components (:mod:`.pca`)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["filters"] = self.filters.model_dump(exclude_none=True)
        if self.pca is not None:
            data["pca"] = self.pca.model_dump(exclude_none=True)
        return data

    def principal_components(self) -> list[str]:
        """The ``covar`` names that are this run's principal components (``PC1``…``PCK``)."""
        if self.pca is None:
            return []
        names = {f"PC{j + 1}" for j in range(self.pca.components)}
        return [c for c in self.covar if c in names]


class GwasPayload(Payload):
    """Which job of a GWAS run this is, and the variants it names (public).

    ``variants``: base64 of an .npz (:func:`smpc.wire.messages.encode_model`): the analysed
    variants' IDs for a ``scan`` after ``mind``; for a ``newton`` round their IDs, alleles
    and current coefficients (:func:`.logistic.round_model`); for the PCA's stages its
    variants, pooled A1 frequencies and basis or final vectors (:mod:`.pcarounds`).
    ``pca``: the final PCA model in a scan or Newton round whose ``covar`` names PCs.
    """

    stage: Literal["align", "scan", "newton", "pcafreq", "pca", "pcascores"] = "scan"
    round: int = Field(default=0, ge=0)
    variants: str | None = Field(default=None, max_length=4 * ((MAX_MODEL_BYTES + 2) // 3))
    pca: str | None = Field(default=None, max_length=4 * ((MAX_MODEL_BYTES + 2) // 3))

    def arrays(self) -> dict[str, np.ndarray] | None:
        return None if self.variants is None else decode_model(self.variants)

    def pca_model(self) -> dict[str, np.ndarray] | None:
        return None if self.pca is None else decode_model(self.pca)
