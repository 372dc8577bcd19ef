"""The allowed range of every numeric setting, declared once for the command line and the Python API.

`float("nan")`, `float("inf")` and `int("-3")` all parse, so argparse's plain `type=float` / `type=int`
let through settings that train a NaN model (`--lr inf`), make every request time out
(`--request-timeout nan`) or crash later with a traceback (`--epochs inf`). Each numeric option is
therefore declared with a `RangedType` (`integer(...)` / `number(...)` below, or one of the named
ranges): argparse calls it on the text, and a value that is not a finite number inside the range is
refused there with argparse's one-line error naming the option. Config files (`--config FILE`) go
through the same types (see onebert/cli/main.py `_coerce_one`), and the library's config classes
(TrainConfig, ...) call `Range.check` with the same ranges, so the three entry points cannot disagree.
This module imports nothing heavy: the CLI builds its parsers without torch.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from onebert.errors import OneBertError
from onebert.errors import show_value as _show  # repr() cut short: a hostile value keeps the error on one line


@dataclass(frozen=True)
class Range:
    """An interval of finite numbers (`integer`: whole numbers only); None means unbounded on that side."""

    integer: bool = False
    min: float | None = None
    max: float | None = None
    min_inclusive: bool = True
    max_inclusive: bool = True
    unit: str = ""  # said after the range: "seconds" for a duration given as '30m'
    note: str = ""  # why the bound is where it is, said in parentheses

    def describe(self) -> str:
        """'an integer >= 1', 'an integer in 1..65535', 'a finite number > 0', 'a number in [0, 1)'."""
        text = f"{self._bounds()} {self.unit}" if self.unit else self._bounds()
        return f"{text} ({self.note})" if self.note else text

    def _bounds(self) -> str:
        if self.integer:
            if self.min is not None and self.max is not None:
                return f"an integer in {_num(self.min)}..{_num(self.max)}"
            if self.min is not None:
                return f"an integer >= {_num(self.min)}"
            return f"an integer <= {_num(self.max)}" if self.max is not None else "an integer"
        if self.min is not None and self.max is not None:
            return (f"a number in {'[' if self.min_inclusive else '('}{_num(self.min)}, "
                    f"{_num(self.max)}{']' if self.max_inclusive else ')'}")
        if self.min is not None:
            return f"a finite number {'>=' if self.min_inclusive else '>'} {_num(self.min)}"
        if self.max is not None:
            return f"a finite number {'<=' if self.max_inclusive else '<'} {_num(self.max)}"
        return "a finite number"

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if not math.isfinite(value):  # nan fails every comparison below only by accident; say it outright
            return False
        if self.min is not None and (value < self.min or (value == self.min and not self.min_inclusive)):
            return False
        if self.max is not None and (value > self.max or (value == self.max and not self.max_inclusive)):
            return False
        return True

    def check(self, value: Any, name: str) -> Any:
        """`value` if it is in range, else OneBertError '<name> must be <range>, got <value>' (for the API)."""
        if not self.contains(value):
            raise OneBertError(f"{name} must be {self.describe()}, got {_show(value)}")
        return value

    def outside(self) -> list[float]:
        """Values just outside the range (for tests that prove every option refuses them)."""
        step = 1 if self.integer else 0.5
        values: list[float] = []
        if self.min is not None:
            values.append(self.min - step if self.min_inclusive else self.min)
        if self.max is not None:
            values.append(self.max + step if self.max_inclusive else self.max)
        return values


class RangedType:
    """An argparse `type=`: parse the text, then refuse anything outside `range` (ArgumentTypeError)."""

    def __init__(self, range: Range, parse: Callable[[str], Any] | None = None, what: str | None = None) -> None:
        self.range = range
        self.parse = parse or (int if range.integer else float)
        self.what = what or ("an integer" if range.integer else "a number")
        self.__name__ = "integer" if range.integer else "number"  # argparse's name for the type

    def __call__(self, text: str) -> Any:
        try:
            value = self.parse(text)
        except argparse.ArgumentTypeError:
            raise
        except (ValueError, OverflowError, TypeError):
            raise argparse.ArgumentTypeError(f"not {self.what}: {_show(text)}") from None
        if not self.range.contains(value):
            raise argparse.ArgumentTypeError(f"must be {self.range.describe()}, got {_show(text)}")
        return value

    def __repr__(self) -> str:
        return f"RangedType({self.range.describe()})"


def integer(min: int | None = None, max: int | None = None, *, parse: Callable[[str], int] | None = None,
            what: str | None = None, unit: str = "", note: str = "") -> RangedType:
    """An integer option in [min, max]; `parse` turns text such as '4M' into the integer."""
    return RangedType(Range(integer=True, min=min, max=max, unit=unit, note=note), parse=parse, what=what)


def number(min: float | None = None, max: float | None = None, *, min_inclusive: bool = True,
           max_inclusive: bool = True, parse: Callable[[str], float] | None = None,
           what: str | None = None, unit: str = "") -> RangedType:
    """A finite float option between min and max; `parse` turns text such as '30m' into the number."""
    return RangedType(Range(min=min, max=max, min_inclusive=min_inclusive, max_inclusive=max_inclusive,
                            unit=unit), parse=parse, what=what)


# The named ranges the commands and config classes share.
POSITIVE_INT = integer(min=1)             # batch sizes, step counts, intervals, counts kept
NON_NEGATIVE_INT = integer(min=0)         # warm-up steps, background workers
SEED = integer(0, 2**32 - 1)              # numpy's seeds are unsigned 32-bit; torch's take any of these
PORT = integer(1, 65535)
POSITIVE = number(0, min_inclusive=False)  # learning rate, epsilon, clipping norm
NON_NEGATIVE = number(0)                   # weight decay
WARMUP_RATIO = number(0, 1, max_inclusive=False)
PROBABILITY = number(0, 1)
EPOCHS = number(0, 1e6, min_inclusive=False)
# A time budget (pretrain --max-time, TrainConfig.max_time): a year is more than any run; '1' and 400 zeros is inf.
TIME_BUDGET = Range(min=0, max=366 * 86400, min_inclusive=False, unit="seconds")


def parse_duration(text: str) -> float:
    """Seconds from '90', '90s', '30m', '1.5h', '1h30m', '2d'."""
    value = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhd])", value)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([smhd])", "", value).strip():
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (examples: 90s, 30m, 1h30m, 2h)")
    scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(number) * scale[unit] for number, unit in parts)


# '1' followed by 400 zeros parses to inf seconds: durations are range-checked like every number.
DURATION = RangedType(TIME_BUDGET, parse=parse_duration, what="a duration")
# serve: inf would make a lone request wait for company forever, nan makes every request time out.
BATCH_WAIT_MS = number(0, 60_000)
REQUEST_TIMEOUT = number(0, 86_400, min_inclusive=False)
# `onebert prepare`'s instances: onebert/data/prepare.py MIN_SEQ_LENGTH..MAX_SEQ_LENGTH (a test keeps them equal).
PREPARE_SEQ_LENGTH = integer(9, 512)
VOCAB_SIZE = integer(6)                   # more than the 5 special tokens ([PAD] [UNK] [CLS] [SEP] [MASK])
# Tokens a text must be allowed: [CLS], [SEP] and at least one of its own; a pair needs [CLS] A [SEP] B [SEP].
MIN_TEXT_TOKENS = 3
MIN_PAIR_TOKENS = 5
TEXT_LENGTH = integer(MIN_TEXT_TOKENS, note="[CLS], [SEP] and at least one token of text")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"

