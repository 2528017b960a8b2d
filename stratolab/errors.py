"""Errors that carry what to tell the user, and the HTTP status that goes with them.

Like JupyterHub's SpawnException and BentoML's exceptions: each error knows its status and a message
that says what to fix; handlers never build error responses themselves.
"""

from __future__ import annotations

from http import HTTPStatus


class StratolabError(Exception):
    """Base error: `str(e)` is the message for the user; `status` is the HTTP status to answer with."""

    status: int = HTTPStatus.INTERNAL_SERVER_ERROR
    #: the input field the message is about (InvalidInput sets it)
    field: str | None = None

    def __init__(self, message: str, *, status: int | None = None, log_message: str | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.log_message = log_message or message


class InvalidInput(StratolabError):
    """The caller sent something we cannot use (400); `field` names what to fix."""

    status = HTTPStatus.BAD_REQUEST

    def __init__(self, message: str, *, field: str | None = None, status: int | None = None):
        super().__init__(message, status=status)
        self.field = field


class NotFound(StratolabError):
    status = HTTPStatus.NOT_FOUND


class Conflict(StratolabError):
    """The request is valid but the platform's state refuses it now (409), e.g. no free GPU."""

    status = HTTPStatus.CONFLICT
