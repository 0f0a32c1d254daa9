"""Errors a user can act on.

Anything raised as a :class:`P3eftError` is a problem with the user's input or environment (an
unknown model name, a missing data directory, a corrupt adapter). The CLI prints its message as one
line on stderr and exits non-zero, without a traceback; every other exception is a bug and keeps its
traceback.
"""


class P3eftError(Exception):
    """Base class for errors caused by bad input or a missing resource, not by a bug."""


class UnknownNameError(P3eftError):
    """A model, dataset, scheme or parameter-set name that the registry does not know."""


class MissingResourceError(P3eftError):
    """A file, directory or package the command needs is not there."""


class ProtocolError(P3eftError):
    """A party sent something the protocol does not allow (bad method, shape, session, replay...)."""


class SecurityError(P3eftError):
    """A security check failed: attestation, certificate, parameter set below 128 bits, foreign key."""
