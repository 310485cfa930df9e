"""The gateway's own mail and webhook calls: composed from outbox items, sent by the worker."""


class ComposeError(ValueError):
    """An outbox item cannot become a message: its secret, transfer or link is gone or invalid,
    so there is nothing left to send."""
