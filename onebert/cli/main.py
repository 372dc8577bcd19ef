"""`onebert <command>`: argument parsing and error reporting only; the work lives in the packages.

Each command is a module in `onebert.cli.commands` with `HELP`, `add_arguments(parser)` and
`run(args)`; modules import torch and friends inside `run`, so `onebert --help` stays fast.
Every command accepts `--config FILE` (YAML, TOML or JSON): its keys are the long option names
(dashes or underscores), and options given on the command line override them.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

from onebert.errors import OneBertError
from onebert.errors import show_value as _show
from onebert.cli.options import HelpFormatter, finish_runtime_options, suggest, unrecognized_message

COMMANDS: dict[str, str] = {
    "demo": "onebert.cli.commands.demo",
    "embed": "onebert.cli.commands.embed",
    "evaluate": "onebert.cli.commands.evaluate",
    "export": "onebert.cli.commands.export",
    "finetune": "onebert.cli.commands.finetune",
    "info": "onebert.cli.commands.info",
    "plot": "onebert.cli.commands.plot",
    "predict": "onebert.cli.commands.predict",
    "prepare": "onebert.cli.commands.prepare",
    "pretrain": "onebert.cli.commands.pretrain",
    "serve": "onebert.cli.commands.serve",
    "tokenizer": "onebert.cli.commands.tokenizer",
}


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a mistake is the one line `onebert CMD: error: ...` (exit 2) without the usage block.

    Sub-command parsers inherit the class (add_subparsers uses the parent's type), so every command
    reports a bad option value (`argument --lr: must be a finite number > 0, got 'inf'`) the way
    onebert reports every other user error; `--help` still shows the usage.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = _OneLineErrorParser(
        prog="onebert",
        description="Pretrain, fine-tune, evaluate and run BERT models. "
                    "Run `onebert COMMAND --help` for a command's options.")
    from onebert import __version__

    parser.add_argument("--version", action="version", version=f"onebert {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers: dict[str, argparse.ArgumentParser] = {}
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP),
                                        formatter_class=HelpFormatter)
        command_parser.add_argument("--config", metavar="FILE", default=None,
                                    help="YAML/TOML/JSON file of option values; command-line options override it")
        module.add_arguments(command_parser)
        for nested in _nested_parsers(command_parser):
            nested.add_argument("--config", metavar="FILE", default=None,
                                help="YAML/TOML/JSON file of option values; command-line options override it")
        command_parser.set_defaults(_module=module)
        subparsers[name] = command_parser
    return parser, subparsers


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`onebert ... | head`): stop quietly as Unix tools do. stdout is pointed at
        # /dev/null so the interpreter's last flush does not raise again; 141 is 128 + SIGPIPE.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subparsers = build_parser()
    command = next((a for a in argv if not a.startswith("-")), None)
    config_file = _find_config_option(argv)
    if command in subparsers and config_file is not None:
        try:
            _apply_option_file(config_file, _deepest_parser(subparsers[command], argv))
        except OneBertError as exc:
            print(f"onebert {command}: error: {exc}", file=sys.stderr)
            return 2
    args, extras = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if extras:  # the command's parser says it (with its prog and a hint), not the top parser's usage
        command_parser = _deepest_parser(subparsers[args.command], argv)
        command_parser.error(unrecognized_message(extras, command_parser))
    try:
        finish_runtime_options(args, f"onebert {args.command}")
        result = args._module.run(args)
    except OneBertError as exc:
        print(f"onebert {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"onebert {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # A full disk, a read-only or vanished directory: the machine's fault, not a bug; one line.
        from onebert.io_utils import os_error_behind

        os_error = os_error_behind(exc)
        if os_error is None or os_error.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f"{os_error.filename}: " if os_error.filename else ""
        print(f"onebert {args.command}: error: {where}{os_error.strerror or os_error}", file=sys.stderr)
        return 2
    return int(result or 0)


_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.ENOENT,
                       errno.EMFILE, errno.ENFILE, errno.EFBIG}


def _nested_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Sub-sub-command parsers (e.g. `onebert tokenizer train`)."""
    return [p for a in parser._actions if isinstance(a, argparse._SubParsersAction) for p in a.choices.values()]


def _deepest_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The parser of the innermost sub-command named in argv: the one whose options a config file sets."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for token in argv:
                if token in action.choices:
                    return _deepest_parser(action.choices[token], argv)
    return parser


def _find_config_option(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _apply_option_file(path: str, parser: argparse.ArgumentParser) -> None:
    """Make the file's values the parser's defaults; a positional the file gives becomes optional."""
    values = load_option_file(path, parser)
    for action in parser._actions:
        if action.dest not in values:
            continue
        if not action.option_strings and action.nargs is None:
            action.nargs = "?"
        action.required = False  # the file supplies it
    parser.set_defaults(**values)


def load_option_file(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Read option values from a file and check each key and value against `parser`'s options.

    Values go through the option's type as the same text would on the command line (so `seed: 1.5`
    is refused as `--seed 1.5` is); a single value for a list option is a list of one; null leaves
    the option at its default. A key given twice (also as `max-steps` and `max_steps`) is an error.
    """
    file = Path(path)
    if not file.is_file():
        raise OneBertError(f"{file}: no such config file")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise OneBertError(f"{file}: not valid UTF-8 (byte offset {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise OneBertError(f"{file}: cannot read: {exc.strerror or exc}") from None
    try:
        data = _parse_option_text(file, text)
    except OneBertError:
        raise
    except Exception as exc:  # noqa: BLE001 - the parsers raise many types; all mean "bad file"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OneBertError(f"{file}: cannot parse: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise OneBertError(f"{file}: expected a mapping of option names to values")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config", "_module")}
    for a in list(actions.values()):  # an alias (--max-length of --max-seq-length) names its option too
        for flag in a.option_strings:
            actions.setdefault(flag.lstrip("-").replace("-", "_"), a)
    values: dict[str, Any] = {}
    for key, value in data.items():
        action = actions.get(str(key).replace("-", "_"))
        dest = action.dest if action is not None else None
        if action is None:
            hint = suggest(str(key), {flag for a in actions.values() for flag in a.option_strings}, file_key=True)
            hint = f" ({hint})" if hint else ""
            raise OneBertError(f"{file}: unknown option {_show(key)}{hint}")
        if dest in values:
            raise OneBertError(f"{file}: option {_show(key)} is given twice")
        if value is None:
            continue
        values[dest] = _coerce(file, key, value, action)
    return values


def _parse_option_text(file: Path, text: str) -> Any:
    """YAML (JSON is read as JSON: YAML 1.1 refuses tab indentation and reads 1e5 as a string); TOML by suffix."""
    if file.suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # Python 3.10: tomllib is the standard library's copy of tomli (a dependency there)
            import tomli as tomllib

        return tomllib.loads(text)  # refuses duplicate keys itself
    if file.suffix == ".json":
        def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            keys = [k for k, _ in pairs]
            twice = next((k for k in keys if keys.count(k) > 1), None)
            if twice is not None:
                raise OneBertError(f"{file}: option {_show(twice)} is given twice")
            return dict(pairs)

        return json.loads(text, object_pairs_hook=unique)
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict:
            seen: list[Any] = []
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    line = key_node.start_mark.line + 1
                    raise OneBertError(f"{file}: line {line}: option {_show(key)} is given twice")
                seen.append(key)
            return super().construct_mapping(node, deep)

    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def _coerce(file: Path, key: str, value: Any, action: argparse.Action) -> Any:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise OneBertError(f"{file}: option {_show(key)} must be true or false, got {_show(value)}")
        return value
    if action.nargs in ("*", "+"):
        items = value if isinstance(value, list) else [value]
        if action.nargs == "+" and not items:
            raise OneBertError(f"{file}: option {_show(key)} needs at least one value")
        return [_coerce_one(file, key, item, action) for item in items]
    return _coerce_one(file, key, value, action)


def _coerce_one(file: Path, key: str, value: Any, action: argparse.Action) -> Any:
    """One value, converted from its text exactly as argparse converts a command-line argument."""
    if isinstance(value, bool):
        raise OneBertError(f"{file}: option {_show(key)} takes a value, not {str(value).lower()} "
                           f"(quote it if you mean the text)")
    if not isinstance(value, (str, int, float)) and not _is_date(value):
        raise OneBertError(f"{file}: option {_show(key)} takes a single value, got {_show(value)}")
    text = value if isinstance(value, str) else str(value)
    try:
        converted = action.type(text) if action.type is not None else text
    except argparse.ArgumentTypeError as exc:  # onebert's own types (onebert/ranges.py) say value and range
        raise OneBertError(f"{file}: option {_show(key)}: {' '.join(str(exc).split())[:200]}") from None
    except (TypeError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise OneBertError(f"{file}: option {_show(key)}: invalid value {_show(value)} ({reason})") from None
    if action.choices is not None and converted not in action.choices:
        raise OneBertError(f"{file}: option {_show(key)} must be one of {', '.join(map(str, action.choices))}, "
                           f"got {_show(value)}")
    return converted


def _is_date(value: Any) -> bool:
    import datetime

    return isinstance(value, (datetime.date, datetime.time))  # TOML and YAML dates: used as their text


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
