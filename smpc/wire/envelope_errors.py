"""Why a share envelope is refused: one exception class per reason, each naming the envelope."""

from __future__ import annotations

from smpc.errors import UserError

__all__ = [
    "DigestMismatch",
    "EnvelopeError",
    "InvalidHeader",
    "NotAnEnvelope",
    "ShapeMismatch",
    "TamperedEnvelope",
    "TruncatedEnvelope",
    "UnknownSigner",
    "UnsupportedVersion",
    "WrongRecipient",
    "WrongSigner",
]


class EnvelopeError(UserError):
    """An envelope that cannot be accepted; the message names job/input/site/party.

    The context fields are kept as attributes so a party can log or reject by them.
    """

    def __init__(
        self,
        message: str,
        *,
        job: str | None = None,
        input: str | None = None,
        site: str | None = None,
        party: int | None = None,
    ) -> None:
        self.job, self.input, self.site, self.party = job, input, site, party
        self.reason = message
        where = " ".join(
            f"{k}={v}"
            for k, v in (("job", job), ("input", input), ("site", site), ("party", party))
            if v is not None
        )
        super().__init__(f"share envelope ({where}): {message}" if where else message)


class NotAnEnvelope(EnvelopeError):
    """The bytes do not start with the envelope magic: something else was received."""


class UnsupportedVersion(EnvelopeError):
    """A real envelope, of a version this smpc does not read (upgrade one side)."""


class TruncatedEnvelope(EnvelopeError):
    """Fewer bytes than the routing part announces: cut in transit or storage."""


class TamperedEnvelope(EnvelopeError):
    """Authentication failed: a bad signature or AEAD tag, or malformed signed content."""


class DigestMismatch(TamperedEnvelope):
    """The decrypted body does not hash to the digest the site signed."""


class WrongRecipient(EnvelopeError):
    """Encrypted to another party's key, or addressed to another party index."""


class UnknownSigner(EnvelopeError):
    """The site named in the routing part is not in the verifier's directory."""


class WrongSigner(EnvelopeError):
    """Signed by a key other than the one the directory holds for the named site."""


class ShapeMismatch(EnvelopeError, ValueError):
    """Body length disagrees with shape × dtype (or a seed body is not 32 bytes)."""


class InvalidHeader(EnvelopeError, ValueError):
    """A header field out of range or of the wrong type (on construction or when opening)."""
