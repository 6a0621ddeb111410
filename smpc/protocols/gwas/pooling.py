"""A party's part: the sites' shares aligned to one reference and added."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from smpc.core.encoding import bytes_to_words, words_to_bytes
from smpc.core.field import PrimeField, field_for
from smpc.errors import UserError
from smpc.protocols.gwas.a1 import a1_sides
from smpc.protocols.gwas.align import Alignment, align
from smpc.protocols.gwas.combine import (
    pack_symmetric,
    take_counts,
    take_cross_products,
    unpack_symmetric,
)
from smpc.protocols.gwas.job import CROSS_PARTS, regression_groups
from smpc.protocols.gwas.phenotypes import NO_PHENOTYPE
from smpc.protocols.gwas.plink.fileset import VariantTable
from smpc.protocols.gwas.sizes import REG_SCALE_BITS

ShareOf = Callable[[str, str], np.ndarray]


def combine(
    job: Any,
    field: PrimeField,
    share_of: ShareOf,
) -> Iterator[tuple[str, np.ndarray]]:
    """This party's shares of the pooled, aligned statistics: (name, shares), one by one.

    ``share_of(input, site)`` gives this party's share of a site's input as field
    elements. Raises UserError when the sites cannot be combined (e.g. one site's
    phenotype is case/control and another's quantitative). ``alignment`` comes first.
    """
    sites = list(job.close)
    infos = {s: json.loads(words_to_bytes(field.to_signed(share_of("site", s)))) for s in sites}
    kinds = {info["phenotype"] for info in infos.values()} - {NO_PHENOTYPE}
    if len(kinds) > 1:
        raise UserError(
            "sites disagree on the phenotype: "
            + ", ".join(f"{s}: {infos[s]['phenotype']}" for s in sites)
        )
    tables = [VariantTable.from_columns(infos[s]["variants"]) for s in sites]
    alignment = align(tables, sites)
    inputs = {i.name: i for i in job.inputs}
    summary = _alignment_summary(infos, sites, alignment, kinds.pop() if kinds else NO_PHENOTYPE)
    yield "alignment", field.from_int(bytes_to_words(json.dumps(summary).encode()))
    if "counts" not in inputs:  # the preliminary job of filters: {mind}: alignment only
        return
    yield "counts", _pooled_counts(field, share_of, sites, alignment)
    if "merge" in inputs:
        yield "merge", _pooled_excess(field, share_of, sites, alignment)
    if "alleles" in inputs:  # a field of its own
        big = field_for(inputs["alleles"].modulus)
        yield "alleles", _pooled_alleles(big, share_of, sites, alignment)
    for group in ("linear", "qt"):
        for suffix in ("", ".hi", ".lo"):  # statistics: one wide entry; aggregates: limbs
            if f"{group}.xtx{suffix}" not in inputs:
                continue
            modulus = inputs[f"{group}.xtx{suffix}"].modulus
            own = field if modulus is None else field_for(modulus)
            sums = _pooled_cross(own, share_of, sites, alignment, f"{group}.{{}}{suffix}")
            for name in CROSS_PARTS:
                yield f"{group}.{name}{suffix}", sums[name]


def _alignment_summary(
    infos: Mapping[str, Any], sites: list[str], alignment: Alignment, phenotype: str
) -> dict[str, Any]:
    """The public ``alignment`` output: the reference variants, the exclusions, the sites'
    phenotype, and with ``reveal: statistics`` the A1 sides and the regressions' bounds."""
    reference = alignment.variants
    summary = {
        "variants": reference.to_columns(),
        "excluded": [list(map(str, row)) for row in alignment.excluded],
        "phenotype": phenotype,
        "sites": sites,
    }
    if all("a1_minor" in info for info in infos.values()):  # reveal: statistics
        claims = [bool(infos[s]["a1_minor"]) for s in sites]
        summary["a1_side"] = a1_sides(claims, alignment.flip, len(reference))
    declared = [infos[s]["magnitudes"] for s in sites if "magnitudes" in infos[s]]
    if declared:  # the pooled bounds of the secure regressions (regression_field)
        summary["magnitudes"] = {
            "samples": sum(int(m["samples"]) for m in declared),
            "pheno": max(int(m["pheno"]) for m in declared),
            "covar": np.max([m["covar"] for m in declared], axis=0, initial=0).tolist(),
        }
    return summary


def _pooled_counts(
    field: PrimeField, share_of: ShareOf, sites: list[str], alignment: Alignment
) -> np.ndarray:
    """The sites' genotype counts in the reference order and orientation, added."""
    total = None
    for k, s in enumerate(sites):
        part = take_counts(share_of("counts", s), alignment.index[k], alignment.flip[k])
        total = part if total is None else field.add(total, part)
    assert total is not None  # a close names at least one site
    return total


def _pooled_excess(
    field: PrimeField, share_of: ShareOf, sites: list[str], alignment: Alignment
) -> np.ndarray:
    """The sites' :func:`.align.merge_excess` ``(V, 2)``, in the reference orientation,
    added (a flip exchanges the homozygotes: both excesses change sign)."""
    total = None
    for k, s in enumerate(sites):
        part = share_of("merge", s)[alignment.index[k]]
        f = np.flatnonzero(alignment.flip[k])
        part[f] = field.sub(field.zeros((len(f), 2)), part[f])
        total = part if total is None else field.add(total, part)
    assert total is not None  # a close names at least one site
    return total


def _pooled_alleles(
    big: PrimeField, share_of: ShareOf, sites: list[str], alignment: Alignment
) -> np.ndarray:
    """The sites' case/control allele counts, added; a flip turns A1 counts into A2 counts."""
    pooled = None
    for k, s in enumerate(sites):
        part = share_of("alleles", s)[alignment.index[k]]
        f = np.flatnonzero(alignment.flip[k])
        part[f, 0] = big.sub(part[f, 1], part[f, 0])
        part[f, 2] = big.sub(part[f, 3], part[f, 2])
        pooled = part if pooled is None else big.add(pooled, part)
    assert pooled is not None  # a close names at least one site
    return pooled


def _pooled_cross(
    own: PrimeField, share_of: ShareOf, sites: list[str], alignment: Alignment, key: str
) -> dict[str, np.ndarray]:
    """One group's cross products (inputs ``key.format(part)``), aligned and added."""
    sums: dict[str, np.ndarray] = {}
    for k, s in enumerate(sites):
        index, flip = alignment.index[k], alignment.flip[k]
        xtx, xty = take_cross_products(
            own,
            unpack_symmetric(share_of(key.format("xtx"), s)),
            share_of(key.format("xty"), s),
            index,
            flip,
        )
        parts = {
            "xtx": pack_symmetric(xtx),
            "xty": xty,
            "yty": share_of(key.format("yty"), s)[index],
        }
        for name, value in parts.items():
            sums[name] = value if name not in sums else own.add(sums[name], value)
    return sums


def regression_sessions(
    spec: Any, job: Any, pooled: Mapping[str, np.ndarray], workdir: Path
) -> list[Any]:
    """Write the pooled scaled cross products for the MPyC session (``reveal: statistics``).

    Shares in the 192-bit field the sites used (the session converts them to the
    regression's own field); the groups the sites' declared phenotype reads
    (:func:`.job.regression_groups`: ``qt`` not for a case/control one, which has .assoc).
    """
    from smpc.protocols.gwas.task import RegressionSession

    summary = json.loads(words_to_bytes(field_for(job.modulus).to_signed(pooled["alignment"])))
    out = []
    for group, k in regression_groups(spec, summary["phenotype"]).items():
        shared = job.input(f"{group}.xtx").modulus
        narrow = field_for(shared)
        files = {}
        for part in CROSS_PARTS:
            files[part] = f"{group}.{part}.bin"
            value = pooled[f"{group}.{part}"]
            (workdir / files[part]).write_bytes(narrow.to_bytes(value.reshape(-1)))
        m = summary["magnitudes"]
        out.append(
            RegressionSession(
                group=group, k=k, share_modulus=shared, samples=m["samples"],
                pheno_bits=m["pheno"], covar_bits=m["covar"][: k - 2],
                beta_scale_bits=REG_SCALE_BITS, files=files,
            )
        )  # fmt: skip
    return out
