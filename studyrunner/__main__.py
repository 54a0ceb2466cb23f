"""``python -m studyrunner`` = the ``studyrunner`` command (used to start worker processes)."""

from studyrunner.cli.main import app

app()
