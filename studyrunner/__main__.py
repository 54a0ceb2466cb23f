"""``python -m studyrunner`` = the ``studyrunner`` command (used to start worker processes)."""

from .cli import app

app()
