"""Schema of protocol spec files (``protocols/*.yaml``): what a job computes.

A spec names a protocol and the few choices an analyst makes; everything else has a
default. The smallest specs are two or three lines::

    name: cohort
    protocol: sum
    inputs: [age, bmi]     # columns of a site's .csv (header row), or arrays of its .npz/.npy

    name: round
    protocol: fedavg       # a site's .npz holds named arrays plus a scalar num_examples

Fields and defaults (N = computing parties of the federation, t = threshold; the table is
Markdown so the README can copy it):

| field | default | allowed |
|---|---|---|
| `name` | required | `[a-z0-9][a-z0-9_-]*`, at most 63 characters; names output files |
| `protocol` | required | `sum`, `fedavg`, `gwas` |
| `inputs` | sum: required; fedavg: all arrays but `num_examples` | unique `[a-z0-9_][a-z0-9_.-]*` |
| `scheme` | `shamir` | `shamir`, `additive` (not gwas) |
| `threshold` | the federation's; additive: N-1 | `0 <= t < N`; gwas: `N >= 2t+1` |
| `min_sites` | `2` | 1 to the number of federation sites |
| `min_parties` | N (every computing party) | `t+1` to N; N with additive, dp, MPyC openings |
| `reveal` | sum: `[sum, count, mean]` | a subset of `sum`, `count`, `mean` |
| | fedavg: `[model]` | `[model]` |
| | gwas: `statistics` | `statistics` or `aggregates` |
| `deliver` | `analyst` | `analyst`, `parties` |
| `compact` | `true` (compact seed shares) | `true`, `false` (full shares) |
| `encoding` | `{frac_bits: 24, int_bits: 30}` (dp: see below) | `frac_bits + int_bits <= 59` |
| `rounds` | `1` | `>= 1`; more than 1 for fedavg only |
| `round_timeout` | `300` (seconds) | `> 0`, at most `timeout` |
| `timeout` | `600` (seconds, whole job) | `> 0` |
| `dp` | none (off) | `{epsilon: >0, clip: >0, delta: (0,1)}`, delta optional; not gwas |
| `tests` | gwas: `[assoc]` | `assoc, model, hardy, freq, missing, linear, logistic` |
| `pheno` | gwas: null (the .fam phenotype) | a column of the site's phenotype file |
| `covar` | gwas: `[]` | covariate file columns; needs `linear` or `logistic` |
| `filters` | gwas: `{}` (no filter) | `maf` (0, 0.5], `geno` [0, 1], `hwe` (0, 1], `mind` [0, 1] |

gwas does not use `inputs`; sum and fedavg do not use `tests`, `pheno`, `covar`, `filters`.

Decisions worth knowing:

- ``threshold`` defaults to the federation's, so a spec file is portable between
  federations. Additive sharing always tolerates t = N-1 (any N-1 parties learn
  nothing), so with ``scheme: additive`` the threshold is N-1 and any other value is an
  error. ``gwas`` multiplies shares, which MPyC's Shamir protocols do only with
  ``N >= 2t+1``; sums and federated averaging are linear and run with any ``t < N``.
- ``min_parties``: how many computing parties must hold the agreed sites for a job to
  complete. With Shamir sharing any t+1 parties reconstruct a linear result (sum,
  fedavg, gwas with ``reveal: aggregates``), so a job closes with the parties it has when
  one is down; more than t+1 still check each other's shares. Jobs that run an MPyC
  session among all N parties (``deliver: parties``, ``dp``, gwas ``reveal:
  statistics``) and additive sharing (every share is needed) need all N.
- ``encoding``: a real x travels as ``round(x * 2^frac_bits)`` and must satisfy
  ``|x| < 2^int_bits`` (:mod:`smpc.core.encoding`). Linear protocols add the sites' values in
  GF(2^61-1) and read the result back as a signed number, so a sum must stay below
  2^60 in magnitude: ``frac_bits + int_bits <= 59`` is what lets at least two sites be
  added, and against a federation the sum over all its sites must fit (58 bits: 4
  sites, 54 bits (the default): 64 sites).
- ``dp``: the parties add Skellam noise calibrated to ``epsilon`` and ``delta``
  (default 1e-6) over all rounds, after each record (sum) or each site's model update
  (fedavg) was clipped to L2 norm ``clip`` by its site (:mod:`smpc.core.dp`); counts and
  ``num_examples`` stay exact. Its default encoding has ``20 - ceil(log2(clip))``
  fractional bits, so the noise stays within what can be drawn exactly. Not for gwas.
- gwas reads each site's PLINK files (genotypes, ``.fam`` phenotype, covariate file);
  ``tests`` follow PLINK 1.9 (``--assoc``, ``--model``, ``--hardy``, ``--freq``,
  ``--missing``, ``--linear``, ``--logistic``); ``linear`` (quantitative phenotype) does
  not mix with ``model`` or ``logistic`` (case/control) in one spec; ``covar`` needs
  ``linear`` or ``logistic``.
- Fields that a protocol does not use are errors, not silently ignored (``tests`` on a
  sum, ``inputs`` on gwas), and so are unknown keys. Integers and booleans are strict:
  ``rounds: "3"`` and ``compact: "yes"`` are errors.

This module holds what every protocol's spec shares: the file's schema (:class:`SpecFile`),
the field types and the common resolved fields (:class:`SpecBase`). Each protocol family
resolves its own fields into its own spec model (``smpc/protocols/*``), and
:func:`smpc.protocols.registry.parse_spec` puts them together. A resolved spec carries
every default explicitly; :meth:`SpecBase.to_dict` / :meth:`SpecBase.to_json` give its
canonical form (only the fields of its protocol), which is
itself a valid spec file, so a job message can carry it and a party can re-validate it
with :func:`smpc.protocols.registry.parse_spec` against its own federation file.

Every problem is a :class:`smpc.errors.UserError` naming the file, the field path and the
fix, one line per problem, as for the federation file (:mod:`smpc.config.federation`).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)

from smpc.config.federation import Federation
from smpc.core.dp import default_frac_bits
from smpc.names import INPUT_PATTERN, NAME_PATTERN

SCHEMES = ("shamir", "additive")
DELIVERIES = ("analyst", "parties")
GWAS_TESTS = ("assoc", "model", "hardy", "freq", "missing", "linear", "logistic", "pca")
NUM_EXAMPLES = "num_examples"
"""The scalar every fedavg site sends as its weight; never a model array."""

DEFAULT_MIN_SITES = 2
DEFAULT_FRAC_BITS = 24
DEFAULT_INT_BITS = 30
MAX_ENCODING_BITS = 59
DEFAULT_ROUND_TIMEOUT = 300.0
DEFAULT_TIMEOUT = 600.0

FAST_FIELD = "GF(2^61-1)"
_FAST_FIELD_HALF = (1 << 60) - 1  # largest |v| read back as signed in GF(2^61-1)

_COLUMN_PATTERN = re.compile(r"[^\s,]{1,128}")

# --- field types ----------------------------------------------------------------------


def one_of(choices: Sequence[str]) -> Callable[[str], str]:
    """A validator accepting one of ``choices``, suggesting the closest on a typo."""

    def check(value: str) -> str:
        if value not in choices:
            close = difflib.get_close_matches(value, choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}{hint}")
        return value

    return check


def _check_name(value: str) -> str:
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError(
            f"invalid name {value!r}: use 1-63 characters from a-z, 0-9, '_' and '-', "
            "starting with a letter or digit (the name becomes part of output file names)"
        )
    return value


def _check_input_name(value: str) -> str:
    if not INPUT_PATTERN.fullmatch(value):
        raise ValueError(
            f"invalid input name {value!r}: use 1-128 characters from a-z, 0-9, '_', '.' "
            "and '-', not starting with '.' or '-' (rename the column or array to match)"
        )
    return value


def _check_column(value: str) -> str:
    if not _COLUMN_PATTERN.fullmatch(value):
        raise ValueError(
            f"invalid column name {value!r}: 1-128 characters without spaces or commas"
        )
    return value


def _unique(items: list[str]) -> list[str]:
    seen: set[str] = set()
    for item in items:
        if item in seen:
            raise ValueError(f"{item!r} is listed twice: list each name once")
        seen.add(item)
    return items


def _as_list(value: object) -> object:
    """Accept one word where a list is expected (``reveal: mean``)."""
    return [value] if isinstance(value, str) else value


Seconds = Annotated[StrictFloat, Field(gt=0, allow_inf_nan=False)]
Probability = Annotated[StrictFloat, Field(allow_inf_nan=False)]
InputName = Annotated[StrictStr, AfterValidator(_check_input_name)]
Column = Annotated[StrictStr, AfterValidator(_check_column)]
Reveal = Annotated[list[StrictStr], BeforeValidator(_as_list), AfterValidator(_unique)]
GwasTest = Annotated[StrictStr, AfterValidator(one_of(GWAS_TESTS))]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Encoding(_Model):
    """Fixed-point encoding of the values sites share (see :mod:`smpc.core.encoding`)."""

    frac_bits: Annotated[StrictInt, Field(ge=0)] = DEFAULT_FRAC_BITS
    int_bits: Annotated[StrictInt, Field(ge=1)] = DEFAULT_INT_BITS

    @property
    def total_bits(self) -> int:
        return self.frac_bits + self.int_bits

    @property
    def max_summands(self) -> int:
        """How many values of this encoding add up without wrapping in GF(2^61-1)."""
        return _FAST_FIELD_HALF // ((1 << self.total_bits) - 1)


class DP(_Model):
    """Differential privacy on the opened result: noise for (epsilon[, delta]), clip bound."""

    epsilon: Annotated[StrictFloat, Field(gt=0, allow_inf_nan=False)]
    delta: Annotated[StrictFloat, Field(gt=0, lt=1)] | None = None
    clip: Annotated[StrictFloat, Field(gt=0, allow_inf_nan=False)]


class Filters(_Model):
    """Quality-control filters of a GWAS, as PLINK 1.9's options of the same names."""

    maf: Annotated[Probability, Field(gt=0, le=0.5)] | None = None
    geno: Annotated[Probability, Field(ge=0, le=1)] | None = None
    hwe: Annotated[Probability, Field(gt=0, le=1)] | None = None
    mind: Annotated[Probability, Field(ge=0, le=1)] | None = None


class Pca(_Model):
    """A GWAS's principal components (``pca:``), as ``plink2 --pca K`` on the pooled data:
    ``components`` K; ``variants`` a file of variant IDs to use (one a line, e.g. an
    LD-pruned list; default every analysed variant); ``maf`` the pooled founders' minor
    allele frequency a used variant needs at least."""

    components: Annotated[StrictInt, Field(ge=1, le=100)] = 10
    variants: StrictStr | None = None
    maf: Annotated[Probability, Field(ge=0, le=0.5)] = 0.01


class SpecFile(_Model):
    """A spec file as written: every optional field is None when absent.

    One schema for every protocol, so an unknown key is reported with every key a spec
    may have; which protocol uses which key is each protocol's ``uses``."""

    name: Annotated[StrictStr, AfterValidator(_check_name)]
    protocol: StrictStr
    inputs: Annotated[list[InputName], AfterValidator(_unique)] | None = None
    scheme: Annotated[StrictStr, AfterValidator(one_of(SCHEMES))] | None = None
    threshold: Annotated[StrictInt, Field(ge=0)] | None = None
    min_sites: Annotated[StrictInt, Field(ge=1)] | None = None
    min_parties: Annotated[StrictInt, Field(ge=1)] | None = None
    reveal: Reveal | None = None
    deliver: Annotated[StrictStr, AfterValidator(one_of(DELIVERIES))] | None = None
    compact: StrictBool | None = None
    encoding: Encoding | None = None
    rounds: Annotated[StrictInt, Field(ge=1)] | None = None
    round_timeout: Seconds | None = None
    timeout: Seconds | None = None
    dp: DP | None = None
    tests: Annotated[list[GwasTest], AfterValidator(_unique)] | None = None
    pheno: Column | None = None
    covar: Annotated[list[Column], AfterValidator(_unique)] | None = None
    filters: Filters | None = None
    pca: Pca | None = None


# --- the resolved spec ----------------------------------------------------------------


class SpecBase(_Model):
    """The fields every protocol's resolved spec has, every default filled in.

    Build one with :func:`smpc.protocols.registry.parse_spec` (or ``load_spec``); the
    constructor does not apply the cross-field rules. ``threshold`` is None only when the
    spec was read without a federation.
    """

    name: str
    protocol: str
    scheme: Literal["shamir", "additive"]
    threshold: int | None
    min_sites: int
    min_parties: int | None = None  # None: read without a federation (then every party)
    reveal: tuple[str, ...]
    deliver: Literal["analyst", "parties"]
    compact: bool
    encoding: Encoding
    round_timeout: float
    timeout: float

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-ready form: the fields of this protocol, defaults explicit.

        It is a valid spec file: ``parse_spec(spec.to_dict(), ...)`` gives ``spec`` back.
        """
        return self.model_dump(mode="json", exclude_none=True)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): stable bytes for a signed job."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))


def common_fields(
    raw: SpecFile,
    federation: Federation | None,
    problem: Callable[[str, str], None],
    *,
    multiplies: bool,
    reveals: tuple[str, ...],
    default_reveal: tuple[str, ...],
) -> dict[str, Any]:
    """The resolved fields of :class:`SpecBase`, with the rules every protocol shares."""
    scheme = raw.scheme or "shamir"
    if multiplies and scheme == "additive":
        problem("scheme", f"{raw.protocol} multiplies shares; use scheme: shamir")
    threshold = _resolve_threshold(raw, scheme, federation, problem, multiplies)

    min_sites = raw.min_sites if raw.min_sites is not None else DEFAULT_MIN_SITES
    if federation is not None and min_sites > len(federation.sites):
        problem(
            "min_sites",
            f"{min_sites} is more than the {len(federation.sites)} sites of federation "
            f"{federation.name!r}: lower min_sites or add sites to the federation",
        )

    reveal = _resolve_reveal(raw.reveal, raw.protocol, reveals, default_reveal, problem)
    min_parties = _resolve_min_parties(raw, scheme, threshold, federation, problem)

    encoding = raw.encoding or (
        Encoding(frac_bits=default_frac_bits(raw.dp.clip)) if raw.dp else Encoding()
    )
    if encoding.total_bits > MAX_ENCODING_BITS:
        problem(
            "encoding",
            f"frac_bits + int_bits = {encoding.frac_bits} + {encoding.int_bits} = "
            f"{encoding.total_bits} is more than {MAX_ENCODING_BITS}: the parties add the "
            f"sites' values in {FAST_FIELD}, where a signed sum must stay below 2^60 for "
            "sums of many sites; lower int_bits or frac_bits",
        )

    timeout = raw.timeout if raw.timeout is not None else DEFAULT_TIMEOUT
    round_timeout = raw.round_timeout if raw.round_timeout is not None else DEFAULT_ROUND_TIMEOUT
    if round_timeout > timeout:
        problem(
            "round_timeout",
            f"{round_timeout:g} s is longer than the whole job's timeout ({timeout:g} s): "
            "lower round_timeout or raise timeout",
        )
    return {
        "name": raw.name,
        "protocol": raw.protocol,
        "scheme": scheme,
        "threshold": threshold,
        "min_sites": min_sites,
        "min_parties": min_parties,
        "reveal": reveal,
        "deliver": raw.deliver or "analyst",
        "compact": True if raw.compact is None else raw.compact,
        "encoding": encoding,
        "round_timeout": float(round_timeout),
        "timeout": float(timeout),
    }


def summands_problem(encoding: Encoding, federation: Federation | None) -> str:
    """Why the sum of every site's values would not fit in GF(2^61-1) ("" if it fits)."""
    if federation is None or encoding.total_bits > MAX_ENCODING_BITS:
        return ""
    fit = encoding.max_summands
    if len(federation.sites) <= fit:
        return ""
    return (
        f"frac_bits + int_bits = {encoding.total_bits} lets sums of at most {fit} sites "
        f"fit in {FAST_FIELD}, but federation {federation.name!r} has "
        f"{len(federation.sites)} sites; lower int_bits or frac_bits"
    )


_UNKNOWN_KEY = re.compile(
    r"(?P<head>.*?(?P<key>[^.: ]+): unknown key) \(allowed here: (?P<keys>[^)]*)\)"
)


def suggest_key(line: str) -> str:
    """Add "did you mean" to an unknown-key line when an allowed key is close."""
    match = _UNKNOWN_KEY.fullmatch(line)
    if not match:
        return line
    close = difflib.get_close_matches(match["key"], match["keys"].split(", "), n=1)
    if not close:
        return line
    return f"{match['head']} (did you mean {close[0]!r}? allowed here: {match['keys']})"


def _resolve_threshold(
    raw: SpecFile,
    scheme: str,
    federation: Federation | None,
    problem: Callable[[str, str], None],
    multiplies: bool,
) -> int | None:
    if federation is None:
        return raw.threshold
    n = len(federation.parties)
    if scheme == "additive":
        if raw.threshold is not None and raw.threshold != n - 1:
            problem(
                "threshold",
                f"{raw.threshold}: additive sharing always tolerates N-1 = {n - 1} colluding "
                f"parties (federation {federation.name!r} has {n}); drop the threshold key",
            )
        return n - 1
    t = raw.threshold if raw.threshold is not None else federation.threshold
    origin = "" if raw.threshold is not None else " (the federation's default)"
    if t >= n:
        problem(
            "threshold",
            f"{t} must be below the number of computing parties ({n}): privacy needs one "
            f"party outside any coalition of t; set threshold: {n - 1} or lower",
        )
    elif multiplies and n < 2 * t + 1:
        problem(
            "threshold",
            f"{t}{origin} needs at least {2 * t + 1} computing parties for protocol "
            f"{raw.protocol}, federation has {n} (Shamir multiplication needs N >= 2t+1): "
            f"set threshold: {(n - 1) // 2} or lower, or add computing parties",
        )
    return t


def _resolve_min_parties(
    raw: SpecFile,
    scheme: str,
    threshold: int | None,
    federation: Federation | None,
    problem: Callable[[str, str], None],
) -> int | None:
    """How many computing parties must take part: the spec's, or every party (N)."""
    if federation is None:
        return raw.min_parties
    n = len(federation.parties)
    if raw.min_parties is None:
        return n
    k = raw.min_parties
    if k > n:
        problem(
            "min_parties",
            f"{k} is more than the {n} computing parties of federation {federation.name!r}: "
            f"set min_parties: {n} or lower",
        )
    elif k < n and scheme == "additive":
        problem(
            "min_parties",
            f"{k}: additive sharing needs all N = {n} computing parties (every party's "
            "share is needed to reconstruct, so one missing party stops the job); drop "
            "min_parties or use scheme: shamir",
        )
    elif threshold is not None and k < threshold + 1:
        problem(
            "min_parties",
            f"{k} is fewer than t+1 = {threshold + 1}: Shamir sharing with threshold {threshold} "
            f"needs {threshold + 1} parties' shares to reconstruct; set min_parties: "
            f"{threshold + 1} or more",
        )
    elif k < n and (raw.dp is not None or raw.deliver == "parties"):
        why = "dp noise is shared" if raw.dp is not None else "deliver: parties opens the result"
        problem(
            "min_parties",
            f"{k}: {why} inside an MPyC session among all N = {n} computing parties, so "
            "such a job needs every party; drop min_parties",
        )
    return k


def _resolve_reveal(
    value: list[str] | None,
    protocol: str,
    allowed: tuple[str, ...],
    default: tuple[str, ...],
    problem: Callable[[str, str], None],
) -> tuple[str, ...]:
    if value is None:
        return default
    items = list(value)
    bad = [item for item in items if item not in allowed]
    if bad:
        problem(
            "reveal",
            f"{', '.join(repr(b) for b in bad)}: protocol {protocol} can reveal only "
            f"{', '.join(allowed)}",
        )
    elif not items:
        problem("reveal", f"empty: nothing would be opened; list some of {', '.join(allowed)}")
    return tuple(item for item in allowed if item in items)  # canonical order
