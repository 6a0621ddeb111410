"""The samples ``filters: {mind}`` keeps at a site: PLINK's ``--mind``, applied first.

Each sample lives at one site, so ``--mind`` is a local decision over the variants the job
names (those every site has); the scan, the Newton rounds and the PCA's jobs all call it,
so every job of a run leaves out the same samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from smpc.errors import UserError
from smpc.protocols.gwas.genotypes import iter_chunks
from smpc.protocols.gwas.plink.constants import SMALL_EPSILON

CHUNK = 2000  # variants read at a time


def mind_keep(site: Any, analysed: np.ndarray, mind: float) -> np.ndarray:
    """Samples passing PLINK 1.9's ``--mind``: missing calls <= int(mind·V·(1 + 2^-44))."""
    rows = {snp: i for i, snp in enumerate(site.variants.snp)}
    absent = [snp for snp in analysed if snp not in rows]
    if absent:
        raise UserError(f"the job's analysed variants include some this site lacks: {absent[:5]}")
    index = np.sort(np.array([rows[snp] for snp in analysed], dtype=np.int64))
    missing = np.zeros(site.n_samples, dtype=np.int64)
    for _, chunk in iter_chunks(site, index, CHUNK):
        missing += np.count_nonzero(chunk < 0, axis=1)
    return missing <= int(mind * len(index) * (1 + SMALL_EPSILON))
