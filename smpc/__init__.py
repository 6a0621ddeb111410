"""smpc: secret-shared computation for biomedical research.

Sites secret-share their data to N non-colluding computing parties, which run
MPyC protocols among themselves over mutually authenticated TLS and open only
the agreed results. See README.md for the security model and DESIGN.md for
the layering of the package.
"""

__version__ = "0.1.0"
