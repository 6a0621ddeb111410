"""PLINK 1.9's numerical constants: the slack it gives its thresholds, defined once here."""

from __future__ import annotations

SMALL_EPSILON = 2.0**-44
"""PLINK's ``SMALL_EPSILON``: the slack on its filter thresholds; a chi-square statistic
below its square prints as 0."""
SMALLISH_EPSILON = 2.0**-35
"""Call rates within this of 1 count as 1 (PLINK's ``SMALLISH_EPSILON``)."""
