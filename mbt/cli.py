"""absl flags for the command lines other than `mbt.main`, each on its own `FlagValues`.

absl's global `flags.FLAGS` is process-wide: two modules defining `--out` on it collide
(DuplicateFlagError) when both are imported, e.g. into one pytest process or next to
`mbt.main`. So each CLI defines its flags on a fresh `flags.FlagValues()` in a function
called by its `main(argv)`, and parses with `parse` here:

    def _flags() -> flags.FlagValues:
        flag_values = flags.FlagValues()
        flags.DEFINE_string("out", None, "output directory", flag_values=flag_values)
        return flag_values

    def main(argv=None):
        flag_values = _flags()
        files = cli.parse(flag_values, argv, prog="python -m mbt.foo", description=__doc__)

`parse` reads `sys.argv[1:]` when `argv` is None, prints help for --help / -h and exits 0,
and on a bad flag prints the error and exits 2 (as argparse did). Flags and positional
arguments may be mixed (GNU style); `--name value` and `--name=value` both work.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NoReturn

from absl import flags

_HELP = ("--help", "-h", "--helpshort", "--helpfull", "-?")


def usage(
    flag_values: flags.FlagValues, prog: str, description: str = "", positional: str = ""
) -> str:
    """The --help text: usage line, description and every flag with its help and default."""
    text = f"usage: {prog} [flags]{' ' + positional if positional else ''}\n"
    if description:
        text += f"\n{description.strip()}\n"
    flag_help = flag_values.get_help(prefix="  ", include_special_flags=False)
    return text + f"\nflags:\n{flag_help}\n"


def parse(
    flag_values: flags.FlagValues,
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str = "",
    positional: str = "",
) -> list[str]:
    """Parses `argv` (without the program name) into `flag_values`; returns the other arguments.

    Args:
      flag_values: the CLI's own flags.
      argv: the arguments; None = `sys.argv[1:]`.
      prog: the command shown in the usage line, e.g. 'python -m mbt.predict'.
      description: shown by --help.
      positional: how the positional arguments read in the usage line, e.g. 'FILE [FILE ...]';
        empty = none are accepted.
    Raises:
      SystemExit: 0 after printing --help; 2 on an unknown or bad flag, a missing required
        one, or an unexpected positional argument.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    flags_part = argv[: argv.index("--")] if "--" in argv else argv
    if any(arg in _HELP for arg in flags_part):
        print(usage(flag_values, prog, description, positional), end="")
        raise SystemExit(0)
    try:
        rest = flag_values([prog, *argv])[1:]
    except flags.Error as error:
        usage_error(prog, str(error))
    if rest and not positional:
        usage_error(prog, f"unexpected arguments: {' '.join(rest)}")
    return rest


def usage_error(prog: str, message: str) -> NoReturn:
    """Prints `message` as a usage error on stderr and exits with status 2."""
    print(f"usage: {prog} [flags] (--help for the list)", file=sys.stderr)
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)
