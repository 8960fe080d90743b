"""mkdocs hook: pages generated at build time from the code, so the site never keeps a copy by hand.

- ``<!-- multirater:cli -->`` becomes the CLI reference, walked from ``napari_multirater.cli.build_parser()``
  (every subcommand, its usage and a table of its arguments).
- ``<!-- multirater:config METHOD -->`` becomes the notes, paper recipe and changes from the paper
  stored in ``src_training/configs/METHOD.json``.
- ``<!-- multirater:experiments -->`` becomes a list of ``docs/experiments/*.py`` with each script's docstring.
- Sphinx roles left in rendered docstrings (``:func:`x```) are shown as plain code.

Run ``python tools/docs_hooks.py`` to print the CLI reference without building the site.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI_MARKER = "<!-- multirater:cli -->"
CONFIG_MARKER = re.compile(r"<!-- multirater:config (\w+) -->")
EXPERIMENTS_MARKER = "<!-- multirater:experiments -->"
# the docstrings use Sphinx roles (:func:`x`); the API pages show them as plain code
SPHINX_ROLE = re.compile(r":(?:func|meth|class|mod|attr|data|exc|obj):(?=<code>)")


def _md(text: str | None) -> str:
    """Plain help text as one markdown table cell (no HTML tags, pipes or emphasis from the text)."""
    text = " ".join((text or "").split())
    for a, b in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("|", "\\|"), ("*", "\\*")):
        text = text.replace(a, b)
    return text


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    return parser._get_formatter()._expand_help(action)  # %(default)s and friends, as --help prints them


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            out += [(name, helps.get(name) or "", p) for name, p in action.choices.items()]
    return out


def _arguments_table(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.metavar or action.dest}`"
        notes = []
        if action.required and action.option_strings:
            notes.append("required")
        if action.choices is not None:
            notes.append("one of " + ", ".join(f"`{c}`" for c in action.choices))
        text = _md(_help(parser, action))
        default = action.default
        shown = "default" in text.lower()  # the help already names it
        if (
            action.option_strings
            and default not in (None, False, argparse.SUPPRESS)
            and action.nargs != 0
            and not shown
        ):
            notes.append(f"default `{default}`")
        rows.append(f"| {name} | {text}{' (' + '; '.join(notes) + ')' if notes else ''} |")
    if not rows:
        return []
    return ["| argument | what it does |", "|---|---|", *rows, ""]


def _command_section(prog: str, help_text: str, parser: argparse.ArgumentParser, level: int) -> list[str]:
    slug = prog.replace(" ", "-")
    lines = [f"{'#' * level} `{prog}` {{#{slug}}}", ""]
    if help_text:
        lines += [_md(help_text)[:1].upper() + _md(help_text)[1:] + ".", ""]
    if parser.description and parser.description != help_text:
        lines += [_md(parser.description), ""]
    usage = parser.format_usage().strip()
    lines += ["```text", usage, "```", ""]
    lines += _arguments_table(parser)
    for name, sub_help, sub in _subparsers(parser):
        lines += _command_section(f"{prog} {name}", sub_help, sub, min(level + 1, 4))
    return lines


def cli_reference() -> str:
    """Markdown: a summary table of the subcommands, then one section per (sub)subcommand."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from napari_multirater.cli import build_parser

    parser = build_parser()
    parser.prog = "multirater"
    subs = _subparsers(parser)
    lines = ["| command | what it does |", "|---|---|"]
    lines += [f"| [`multirater {name}`](#multirater-{name}) | {_md(h)} |" for name, h, _ in subs]
    lines.append("")
    for name, h, sub in subs:
        lines += _command_section(f"multirater {name}", h, sub, 2)
    return "\n".join(lines)


def config_notes(method: str) -> str:
    """Markdown: what ``src_training/configs/<method>.json`` says about itself and the paper."""
    path = ROOT / "src_training" / "configs" / f"{method}.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    lines = [f"From `src_training/configs/{method}.json`:", ""]
    if cfg.get("_notes"):
        lines += [f"- **Notes:** {_md(cfg['_notes'])}"]
    if cfg.get("_paper_recipe"):
        recipe = ", ".join(f"{k} {v}" for k, v in cfg["_paper_recipe"].items())
        lines += [f"- **The paper's training recipe** (`_paper_recipe`): {_md(recipe)}"]
    train = cfg.get("train", {})
    if train:
        keys = ("lr", "batch_size", "epochs", "select_metric", "augment")
        ours = ", ".join(f"{k} {json.dumps(train[k])}" for k in keys if k in train)
        lines += [f"- **This project's default** (`train`): {_md(ours)}"]
    changes = cfg.get("_changes_from_paper") or {}
    if changes:
        lines += ["", "| setting | changed from the paper, and why |", "|---|---|"]
        lines += [f"| `{k}` | {_md(str(v))} |" for k, v in changes.items()]
    return "\n".join(lines) + "\n"


def experiment_scripts() -> str:
    """Markdown: one section per ``docs/experiments/*.py``, its docstring as written (usage included)."""
    lines = []
    for path in sorted((ROOT / "docs" / "experiments").glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or "(no docstring)"
        first, _, rest = doc.partition("\n")
        lines += [f"## `{path.name}`", "", _md(first), ""]
        if rest.strip():
            lines += ["```text", rest.strip(), "```", ""]
    return "\n".join(lines)


def on_page_markdown(markdown: str, page=None, config=None, files=None, **kwargs) -> str:
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if EXPERIMENTS_MARKER in markdown:
        markdown = markdown.replace(EXPERIMENTS_MARKER, experiment_scripts())
    return CONFIG_MARKER.sub(lambda m: config_notes(m.group(1)), markdown)


def on_page_content(html: str, page=None, config=None, files=None, **kwargs) -> str:
    return SPHINX_ROLE.sub("", html)


if __name__ == "__main__":
    print(cli_reference())
