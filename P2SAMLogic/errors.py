"""Exceptions that name the bad input and say what to do about it."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union


class P2SAMError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(P2SAMError, ValueError):
    """An input (file, array, option) is unusable.

    The message always starts with the input's name (a file path or an option),
    then says what is wrong with it.
    """

    def __init__(self, source: Optional[Union[str, Path]], problem: str) -> None:
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(problem if source is None else f"{source}: {problem}")


class OutputError(P2SAMError):
    """An output could not be written (disk full, file system error); nothing was replaced.

    The message starts with the output's path. The command line exits with status 1 (not 2:
    the inputs and options were fine).
    """

    def __init__(self, target: Optional[Union[str, Path]], problem: str) -> None:
        self.target = None if target is None else str(target)
        self.problem = problem
        super().__init__(problem if target is None else f"{target}: {problem}")


class CheckpointError(InputError):
    """A model checkpoint is missing, unreadable, or does not fit the expected architecture."""


class CancelledError(P2SAMError):
    """The caller's cancel callback asked the run to stop; nothing was written."""
