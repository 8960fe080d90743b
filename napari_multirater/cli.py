"""The ``multirater`` console script: one entry point, one subcommand per task."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from .argtypes import OneLineParser

SUBCOMMANDS = (
    "napari_multirater.commands.synth",
    "napari_multirater.commands.demo",
    "napari_multirater.commands.import_data",
    "napari_multirater.commands.export_dataset",
    "napari_multirater.analysis.cli_raters",
    "napari_multirater.commands.persona",
    "src_training.cli",
    "napari_multirater.inference.predict_cli",
    "src_training.tools.bench",
)

# what the `napari` / `pyqt5` extras bring; the base install lacks them
PLUGIN_EXTRA_MODULES = (
    "napari",
    "magicgui",
    "qtpy",
    "npe2",
    "superqt",
    "vispy",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="multirater",
        description="Multi-rater medical image segmentation: data, training, evaluation, inference, analysis.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        importlib.import_module(module).add_parser(sub)
    return parser


def _show_untrusted_warnings(func):
    """Run ``func`` printing each UntrustedPathWarning (a project file moved aside) as one line
    ``warning: ...`` on stderr instead of Python's two-line format; other warnings unchanged."""
    from .io.contained import UntrustedPathWarning

    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UntrustedPathWarning):
            print(f"warning: {message}", file=sys.stderr if file is None else file)
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        return func()
    finally:
        warnings.showwarning = original


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        print(f"{parser.prog}: error: choose a COMMAND (see {parser.prog} --help)", file=sys.stderr)
        return 2
    try:
        return int(_show_untrusted_warnings(lambda: args.func(args)) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as e:  # a base (training-only) install has no napari / Qt: one line
        if (e.name or "").split(".")[0] not in PLUGIN_EXTRA_MODULES:
            raise
        print(
            f"error: '{parser.prog} {args.command}' needs the napari plugin ({e.name} is not installed): "
            "pip install 'napari-multirater[pyqt5]'",
            file=sys.stderr,
        )
        return 2
    except OSError as e:  # unwritable --out, disk full, missing folder...: one line, no traceback
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
