"""Requests the model server refuses: each is one `{"error": message}` reply with its HTTP status
(`diva_tf.serving.server` maps them), never a traceback."""

from __future__ import annotations

from diva_tf.core.errors import DivaError


class RequestError(DivaError):
    """A request the client must fix; `status` is the HTTP status of the reply."""

    status = 400


class BadRequest(RequestError):
    status = 400


class NotFound(RequestError):
    status = 404


class TooLarge(RequestError):
    status = 413
