"""Check that nothing was lost when the README was split into the docs site (issue 31).

Takes a README as it was (default: the one at commit 390eda9, before the split) and confirms that
each of its numbers, commands and table rows is still written somewhere in the documentation:
README.md, docs/**/*.md, the dock help files that the docs include (napari_multirater/help/*.md)
and CONTRIBUTING.md (included as the Contributing page).

    python tools/check_docs_moved.py [--old-ref 390eda9 | --old-file OLD_README.md]

- numbers: every token with a decimal point, a thousands comma, or 3+ digits (e.g. 0.767, 1,552,
  128); small integers are everywhere and prove nothing, so they are not checked;
- commands: every line of a code block and every inline code span that starts with
  multirater, python, make, pip, torchrun or xvfb-run (continuation lines joined, spaces normalised);
- table rows: every markdown table row, verbatim (spaces normalised).

The old README's hand-kept command table (synopses such as ``multirater bench --out DIR``) is
replaced by the CLI reference generated from the parsers (tools/docs_hooks.py): a synopsis, or a
table row holding one, counts as found when its subcommand has a generated section whose usage
names each of its --flags.

Prints what is missing and exits 1 if anything is, else prints the counts and exits 0.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMAND_WORDS = ("multirater ", "python ", "make ", "pip ", "torchrun ", "xvfb-run ")
NUMBER = re.compile(r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+|\d{3,})(?![\w])")


def _norm(text: str) -> str:
    return " ".join(text.split())


def commands(markdown: str) -> list[str]:
    out, in_code = [], False
    lines = markdown.replace("\\\n", " ").splitlines()  # a shell continuation is one command
    for line in lines:
        if line.strip().startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            cmd = line.split("  #")[0].strip()  # drop a trailing comment
            if cmd.startswith(COMMAND_WORDS):
                out.append(_norm(cmd))
    out += [_norm(c) for c in re.findall(r"`([^`\n]+)`", markdown) if c.startswith(COMMAND_WORDS)]
    return list(dict.fromkeys(out))


def table_rows(markdown: str) -> list[str]:
    rows = [_norm(line) for line in markdown.splitlines() if line.startswith("|") and not line.startswith("|---")]
    return list(dict.fromkeys(rows))


def numbers(markdown: str) -> list[str]:
    return list(dict.fromkeys(NUMBER.findall(markdown)))


def usages() -> dict[str, str]:
    """Subcommand (``multirater import lidc``) -> its usage text in the generated CLI reference."""
    sys.path.insert(0, str(ROOT / "tools"))
    from docs_hooks import cli_reference

    out: dict[str, str] = {}
    name, block = None, None
    for line in cli_reference().splitlines():
        heading = re.match(r"#+ `(multirater[^`]*)`", line)
        if heading:
            name = heading.group(1)
        elif line == "```text" and name:
            block = []
        elif line == "```" and block is not None:
            out[name], block = _norm(" ".join(block)), None
        elif block is not None:
            block.append(line)
    return out


def in_cli_reference(item: str, usage: dict[str, str]) -> bool:
    """A synopsis (or a table row starting with one) whose subcommand and --flags the reference has."""
    cmd = item.strip("| `").split("`")[0] if item.startswith("|") else item
    words = cmd.split()
    name = next((" ".join(words[:n]) for n in (3, 2) if " ".join(words[:n]) in usage), None)
    return name is not None and all(flag in usage[name] for flag in re.findall(r"--[a-z][\w-]*", cmd))


def corpus() -> str:
    paths = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]
    paths += sorted((ROOT / "napari_multirater" / "help").glob("*.md"))
    return "\n".join(p.read_text(encoding="utf-8") for p in paths if p.is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-ref", default="390eda9", help="git commit whose README.md is the old one")
    parser.add_argument("--old-file", type=Path, help="the old README as a file (instead of --old-ref)")
    args = parser.parse_args(argv)
    if args.old_file:
        old = args.old_file.read_text(encoding="utf-8")
    else:
        old = subprocess.run(
            ["git", "show", f"{args.old_ref}:README.md"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    text = corpus()
    flat = _norm(text.replace("\\\n", " "))
    rows_now = set(table_rows(text))
    found_numbers = set(NUMBER.findall(text))
    missing = {
        "numbers": [n for n in numbers(old) if n not in found_numbers],
        "commands": [c for c in commands(old) if c not in flat],
        "table rows": [r for r in table_rows(old) if r not in rows_now],
    }
    counts = {"numbers": len(numbers(old)), "commands": len(commands(old)), "table rows": len(table_rows(old))}
    usage = usages()
    for kind, items in missing.items():
        generated = [i for i in items if in_cli_reference(i, usage)]
        if kind == "table rows" and "| command | what it does |" in items:
            generated.append("| command | what it does |")  # that table's header: the reference has its own
        missing[kind] = [i for i in items if i not in generated]
        extra = f" ({len(generated)} as synopses in the generated CLI reference)" if generated else ""
        print(f"{kind}: {counts[kind] - len(missing[kind])} of {counts[kind]} found{extra}")
        for item in missing[kind]:
            print(f"  missing: {item}")
    return 1 if any(missing.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
