"""The `ftspec` command: parses arguments and dispatches to one module per verb.

Exit codes on every verb: 0 ok, 1 findings (invalid, infeasible, gate failed), 2 the tool itself
could not run (bad arguments, unreadable input, internal error).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

from ftspec.compiler import __version__

# verb -> (module under ftspec.compiler.verbs, one-line help). Modules import heavy code only in run().
VERBS: dict[str, tuple[str, str]] = {
    "lint": ("lint", "validate specs: schema and cross-field rules"),
    "check": ("check", "memory/time/cost feasibility, package pins and dataset validation"),
    "compile": ("compile", "write the build folder: plan, accelerate/DeepSpeed configs, launch scripts"),
    "launch": ("launch", "train a compiled plan with the embedded runtime"),
    "evaluate": ("evaluate", "compare base and fine-tuned models and apply the acceptance gate"),
    "run": ("run", "lint, check, compile, launch and evaluate in one go"),
    "diff": ("diff", "semantic diff of two specs after defaults"),
    "import": ("import_config", "translate an Axolotl, LLaMA-Factory or torchtune config into a spec"),
    "init": ("init", "write a new spec fitted to your data and hardware"),
    "schema": ("schema", "print a JSON Schema (spec, plan or report)"),
    "codes": ("codes", "list every diagnostic code (text, markdown or JSON)"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse exits 2 already; keep the message short
        self.print_usage(sys.stderr)
        self.exit(2, f"ftspec: error: {message}\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ftspec", description="Declarative spec compiler and validator for LLM fine-tuning."
    )
    parser.add_argument("--version", action="version", version=f"ftspec {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    for verb, (module, help_text) in VERBS.items():
        p = sub.add_parser(verb, help=help_text, description=help_text)
        if only is None or only == verb:
            mod = _load(module)
            if mod is not None:
                mod.add_arguments(p)
    return parser


def _load(module: str):
    try:
        return importlib.import_module(f"ftspec.compiler.verbs.{module}")
    except ModuleNotFoundError as exc:
        if exc.name == f"ftspec.compiler.verbs.{module}":
            return None  # verb not built yet in this checkout
        raise


def _unknown_verb(verb: str) -> int:
    """`ftspec lnt`: argparse's "invalid choice" lists every verb; say which one was meant instead."""
    import difflib

    shown = verb.encode("unicode_escape").decode("ascii")  # a terminal gets no control bytes from argv
    guess = difflib.get_close_matches(verb, list(VERBS), n=1, cutoff=0.6)
    print(f"ftspec: error: unknown verb '{shown}'", file=sys.stderr)
    if guess:
        print(f"  hint: did you mean `ftspec {guess[0]}`?", file=sys.stderr)
    else:
        print(f"  hint: the verbs are {', '.join(VERBS)} (ftspec --help)", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in argv if not a.startswith("-")), None)
    if verb is not None and verb not in VERBS:
        return _unknown_verb(verb)
    parser = build_parser(verb if verb in VERBS else None)
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return 2
    mod = _load(VERBS[args.verb][0])
    if mod is None:
        print(f"ftspec: '{args.verb}' is not available in this build", file=sys.stderr)
        return 2
    try:
        return int(mod.run(args) or 0)
    except KeyboardInterrupt:
        print("ftspec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug in ftspec, not bad input: say so, exit 2, keep the trace opt-in
        if os.environ.get("FTSPEC_DEBUG"):
            raise
        print(f"ftspec: internal error in '{args.verb}': {type(exc).__name__}: {exc}", file=sys.stderr)
        print("  set FTSPEC_DEBUG=1 for the traceback, and please report it", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
