"""Domain errors. Transports map each class to one gRPC status and one CLI exit code."""

from __future__ import annotations


class LlmkError(Exception):
    """Base of every error a user can cause or see; the message says what was wrong."""

    exit_code = 1


class NotFound(LlmkError):
    exit_code = 3


class AlreadyExists(LlmkError):
    exit_code = 4


class Conflict(LlmkError):
    """The branch head moved since the caller read it: re-read and retry."""

    exit_code = 5


class InvalidInput(LlmkError):
    exit_code = 2


class InvalidDelta(InvalidInput):
    pass


class TooLarge(InvalidInput):
    """A request over a size limit (HTTP 413): send less."""


class Frozen(LlmkError):
    exit_code = 6


class Corrupt(LlmkError):
    """Stored bytes do not match their checksum; never served."""

    exit_code = 7


class Unauthenticated(LlmkError):
    exit_code = 8


class FailedPrecondition(LlmkError):
    exit_code = 9


class ResourceExhausted(LlmkError):
    exit_code = 10


class NoSpace(ResourceExhausted):
    """The disk under the store (or under an export) is full: nothing was half-written; free space, retry."""

    exit_code = 12


class Unavailable(LlmkError):
    exit_code = 11
