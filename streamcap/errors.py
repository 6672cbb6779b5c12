"""Errors that end a command with one clear line and a documented exit code.

Exit codes (also in the README):
  0  finished normally (end of input, or every live source given up after --max-retries
     when at least one frame was processed)
  1  an unexpected internal error (a bug: the one-line report names it)
  2  bad input: a missing or unreadable file, an unknown option value, a bad checkpoint,
     weights that cannot be found offline, an unwritable output path
  3  a live source never connected (gave up after --max-retries)
  4  a pipeline stage failed while running (the model raised, the disk filled up)
  130 interrupted by Ctrl-C (SIGINT); 143 terminated (SIGTERM); output is finalized first
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_SOURCE_FAILED = 3
EXIT_STAGE_FAILED = 4
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class StreamcapError(Exception):
    """An error the user can act on; the CLI prints ``str(err)`` and exits with ``exit_code``."""

    exit_code = EXIT_BAD_INPUT


class BadInputError(StreamcapError):
    """A file, URL, option value or output path that cannot be used."""

    exit_code = EXIT_BAD_INPUT


class SourceError(StreamcapError):
    """A live source that never delivered a frame."""

    exit_code = EXIT_SOURCE_FAILED


class StageError(StreamcapError):
    """A pipeline stage (model, writer) failed while running."""

    exit_code = EXIT_STAGE_FAILED
