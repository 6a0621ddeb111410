"""The name patterns, defined once: federation members, job IDs, spec and job inputs.

Names travel in MQTT topics, envelope headers, certificate CNs and output file names, so
every layer checks them against the same patterns.

- :data:`NAME_PATTERN` — a party, site, analyst or job ID, a spec's ``name``: 1-63
  characters from ``a-z``, ``0-9``, ``_``, ``-``, starting with a letter or digit.
- :data:`INPUT_PATTERN` — an input name, in a spec and in a job message: 1-128 characters
  from ``a-z``, ``0-9``, ``_``, ``.``, ``-``, not starting with ``.`` or ``-``.

Input names are lower case everywhere. The spec always accepted only lower case, and
every name a protocol derives from a spec input appends lower-case parts to it
(``age.sum``, ``age.count``, ``w.weighted``, ``num_examples``, GWAS ``counts``,
``linear.xtx.hi``, ``a1.swap``), so a job message never needs an upper-case letter;
job messages used to accept ``A-Z`` as well, which no producer made use of. A site's own
column names (which may be upper case) are mapped to inputs in its configuration and
never travel as input names.
"""

from __future__ import annotations

import re

__all__ = ["INPUT_PATTERN", "INPUT_RE", "NAME_PATTERN", "NAME_RE"]

NAME_RE = r"^[a-z0-9][a-z0-9_-]{0,62}$"
"""A member, job or spec name, as a pydantic ``pattern``."""
INPUT_RE = r"^[a-z0-9_][a-z0-9_.-]{0,127}$"
"""An input name (e.g. ``age.sum``: input ``age``, statistic ``sum``), as a ``pattern``."""
NAME_PATTERN = re.compile(NAME_RE[1:-1])
INPUT_PATTERN = re.compile(INPUT_RE[1:-1])
