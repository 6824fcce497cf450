"""The ``qat`` command line: argument parsing and exit codes (``main``), one function per
subcommand (``commands``)."""

from pipeline.cli.app import console_main, main, parse_args

__all__ = ["console_main", "main", "parse_args"]
