"""Command-line interface: argument parsing only; each subcommand calls one library function.

``main(argv)`` runs one command and returns its exit status (callable from tests). The commands
and their options are in ``commands``; the dataclass-to-flags machinery in ``options``. Only the
chosen command's options are built, so ``gpt2tune --help`` and ``--version`` import no torch.
"""

from __future__ import annotations

import sys

from gpt2tune.cli.commands import COMMANDS
from gpt2tune.cli.options import CommandParser, collect  # noqa: F401  (collect: for tests)
from gpt2tune.errors import UserError, as_flag
from gpt2tune.runtime import keep_freed_memory


def build_parser() -> tuple[CommandParser, dict[str, CommandParser]]:
    """The ``gpt2tune`` parser and each command's parser by name.

    A command's options are added the first time it parses (or prints its help).
    """
    import gpt2tune

    parser = CommandParser(prog="gpt2tune", description=gpt2tune.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"gpt2tune {gpt2tune.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {
        name: sub.add_parser(name, help=help, description=description or help, build=options)
        for name, help, description, options in COMMANDS
    }
    return parser, commands


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (callable from tests)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, commands = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help, --version
            return e.code if isinstance(e.code, int) else 0
        # one process setting for every command that trains or generates (see runtime): `train`
        # without it ran gpt2-micro at 2,400 tokens/s where `pretrain`, with it, ran at 4,258
        keep_freed_memory()
        return args.func(args)
    except UserError as e:
        # the chosen command spells each field as its own flag (LoRAConfig's r is --lora-r)
        command = commands.get(argv[0]) if argv else None
        spell = command.spell if isinstance(command, CommandParser) else as_flag
        print(f"gpt2tune: error: {e.phrased(spell)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("gpt2tune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
