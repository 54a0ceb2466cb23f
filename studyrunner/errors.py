"""The one base class of errors a user can fix; the CLI turns them into a message and exit code 1."""

__all__ = ["StudyrunnerError"]


class StudyrunnerError(ValueError):
    """Bad input (a key, value, file or path): the message names it and says what is allowed."""
