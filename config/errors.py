"""The base of mdmq's own errors: `except MdmqError` catches every error mdmq raises on purpose, and nothing
from a library or a bug. Subclasses stay few: one per thing a caller decides on."""


class MdmqError(Exception):
    """An error mdmq raises on purpose; its message is written for the admin or operator who reads it."""
