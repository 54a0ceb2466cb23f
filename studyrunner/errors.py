"""The one base class of errors a user can fix; the CLI turns them into a message and exit code 1."""

__all__ = ["StudyrunnerError", "Terminated", "note_signal", "signalled"]


class StudyrunnerError(ValueError):
    """Bad input (a key, value, file or path): the message names it and says what is allowed."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, Slurm, ``docker stop``) arrived while a study ran: handled as
    Ctrl-C is (the trial ends INTERRUPTED, its MLflow run and the parent run KILLED, resumable)."""


_SIGNALLED: list[int] = []  # Ctrl-C / SIGTERM received by this process (the CLI's handlers note them)


def note_signal(signum: int) -> None:
    _SIGNALLED.append(signum)


def signalled() -> int | None:
    """The last SIGINT/SIGTERM this process received, if any: an error raised while one is being
    delivered (inside a C extension that turns it into its own exception) is that interruption."""
    return _SIGNALLED[-1] if _SIGNALLED else None
