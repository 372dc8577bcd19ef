"""The `onebert` command line: main.py parses and reports errors, options.py declares the options several
commands share, commands/ holds one module per command. `from onebert.cli import main` is the entry point."""

from onebert.cli.main import COMMANDS, _nested_parsers, build_parser, load_option_file, main

__all__ = ["COMMANDS", "build_parser", "load_option_file", "main"]
