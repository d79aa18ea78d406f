"""What every ``imaginebot`` command shares: the parser that never dumps usage, and UsageError."""

from __future__ import annotations

import argparse
from typing import NoReturn

from bot.errors import BotError


class UsageError(BotError):
    """Bad command-line input; ``main`` prints it on one line and exits 2."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, with no usage dump and never a traceback."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)
