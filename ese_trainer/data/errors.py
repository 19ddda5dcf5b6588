"""The one error type for bad data: always names the file (or dataset) and row."""


class DataError(ValueError):
    """Invalid or unreadable data; the message names the source and the row."""
