"""The one base class of errors a user can fix; the CLI turns them into a message and exit code 1."""

__all__ = ["StudyrunnerError", "Terminated"]


class StudyrunnerError(ValueError):
    """Bad input (a key, value, file or path): the message names it and says what is allowed."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, Slurm, ``docker stop``) arrived while a study ran: handled as
    Ctrl-C is (the trial ends INTERRUPTED, its MLflow run and the parent run KILLED, resumable)."""
