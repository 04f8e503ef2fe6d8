"""What omni-run and omni-voices share: argparse errors as one line, help that states each default once, number
flags checked where they are parsed (so the message names the flag), SIGTERM turned into a clean stop, and the
one-line notice for a demo bundle."""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

from .bundle import Bundle


class Terminated(BaseException):
    """SIGTERM arrived. Raised in the main thread like KeyboardInterrupt, so `finally` blocks and atomic outputs clean
    up (a half-written file is dropped, an existing one stays) instead of the process dying mid-write."""


def _raise_terminated(signum, frame) -> NoReturn:
    raise Terminated()


@contextmanager
def stop_cleanly_on_sigterm() -> Iterator[None]:
    """While the block runs (a CLI's main, in the main thread), SIGTERM raises Terminated; the CLI exits 143."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


TERMINATED_EXIT = 128 + signal.SIGTERM


class OneLineErrorParser(argparse.ArgumentParser):
    """A usage error is one line naming the flag (argparse's default prints the whole usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends `(default: X)` only where a default exists and the help does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or not action.option_strings or action.default is None or action.default is False
                or action.default == [] or action.default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def int_at_least(low: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
        if number < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {number}")
        return number
    return parse


def float_in(low: float, high: float, low_open: bool = False) -> Callable[[str], float]:
    """A float in [low, high] ((low, high] with `low_open`)."""
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
        if not (low < number if low_open else low <= number) or not number <= high:
            if high == math.inf:
                raise argparse.ArgumentTypeError(f"must be {'above' if low_open else 'at least'} {low:g}, got {value}")
            raise argparse.ArgumentTypeError(f"must be in {'(' if low_open else '['}{low:g}, {high:g}], got {value}")
        return number
    return parse


def announce_demo(bundle: Bundle, prog: str) -> None:
    """One stderr line per run on a demo bundle (random weights), so noise is never mistaken for the model."""
    if bundle.random_weights:
        print(f"{prog}: note: {bundle.root} is a demo bundle with random weights, so its answers are noise; export "
              f"the released weights with `omni-export --from-hub`", file=sys.stderr, flush=True)
