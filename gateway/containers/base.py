"""What every container reader shares: the error for a structure that cannot be read."""


class Unreadable(Exception):
    """The structure contradicts itself or runs past the data; the message is logged."""
