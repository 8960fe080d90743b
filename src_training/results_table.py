"""Markdown results tables from several ``multirater evaluate --json`` files (the README's tables).

The numbers are copied from the JSON files, never recomputed; each row names the file it came from
so a reader can trace it back to the ``evaluate`` command that wrote it.
"""

from __future__ import annotations

import json
from pathlib import Path

SUMMARY = (
    "ged",
    "ged_dpersona",
    "dice_soft",
    "dice_max",
    "dice_max_reverse",
    "dice_match",
    "dice_each_identity_mean",
    "dice_each_matched_mean",
    "presence_brier",
    "presence_brier_prior",
)
BUCKET_METRICS = ("ged", "ged_dpersona", "dice_soft", "dice_max", "dice_match", "dice_each_identity_mean")
PRESENCE_BUCKET_METRICS = ("presence_brier", "presence_brier_prior", "presence_expected", "presence_true")


class ResultsError(ValueError):
    """An evaluate JSON is missing or does not have the keys of ``multirater evaluate --json``."""


def load_results(paths) -> list[tuple[str, dict]]:
    """(row label, evaluate JSON) per path; the label is the method (or the human reference)."""
    rows = []
    for p in map(Path, paths):
        try:
            ev = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ResultsError(f"cannot read {p}: {e}") from e
        missing = [k for k in ("ged", "dice_match", "per_bucket", "n_images") if k not in ev]
        if missing:
            raise ResultsError(f"{p} is not a `multirater evaluate --json` file (missing {', '.join(missing)})")
        rows.append((_label(ev, p), ev))
    return rows


def _metric_rows(rows):
    """The rows of the sample-metric tables: a stage-II model (an ``experts`` block) gives two,
    labelled, its prior samples and its K expert outputs; per-expert Dice and the persona matrix
    are the personas' and keep one row per model."""
    for label, ev in rows:
        experts = ev.get("experts")
        if not isinstance(experts, dict):
            yield label, ev
            continue
        row = dict(ev, **{k: v for k, v in experts.items() if k != "per_bucket"})
        row["n_samples"] = len(ev.get("dice_each_identity") or []) or "K"
        row["per_bucket"] = {
            b: dict(v, **experts.get("per_bucket", {}).get(b, {})) for b, v in ev["per_bucket"].items()
        }
        yield f"{label} (prior samples)", ev
        yield f"{label} (K expert outputs)", row


def _label(ev: dict, path: Path) -> str:
    method = str(ev.get("method") or path.stem)
    if method.startswith("human"):
        return "human reference (leave-one-rater-out)"
    if method == "dpersona":
        stage = ev.get("stage") or (2 if "stage2" in str(ev.get("checkpoint", "")) else 1)
        return f"dpersona stage {'II' if int(stage) == 2 else 'I'}"
    return method


def _f(v) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    return f"{v:.3f}"


def summary_table(rows) -> str:
    head = "| method | samples | " + " | ".join(SUMMARY) + " |"
    lines = [head, "|" + "---|" * (len(SUMMARY) + 2)]
    for label, ev in _metric_rows(rows):
        lines.append(f"| {label} | {ev.get('n_samples', 'n/a')} | " + " | ".join(_f(ev.get(k)) for k in SUMMARY) + " |")
    return "\n".join(lines)


def per_expert_table(rows) -> str:
    names = next((ev.get("rater_names") for _, ev in rows if ev.get("rater_names")), None) or []
    k = max(len(ev.get("dice_each_identity") or []) for _, ev in rows)
    names = list(names) + [f"rater_{i + 1}" for i in range(len(names), k)]
    lines = ["| method | " + " | ".join(f"{n} identity / matched" for n in names[:k]) + " |", "|" + "---|" * (k + 1)]
    for label, ev in rows:
        ident = list(ev.get("dice_each_identity") or []) + [None] * k
        match = list(ev.get("dice_each_matched") or []) + [None] * k
        lines.append(f"| {label} | " + " | ".join(f"{_f(ident[i])} / {_f(match[i])}" for i in range(k)) + " |")
    return "\n".join(lines)


def per_bucket_table(rows) -> str:
    buckets = sorted({b for _, ev in rows for b in ev["per_bucket"]}, key=int)
    counts = {
        b: next((ev["per_bucket"][b].get("n_images") for _, ev in rows if b in ev["per_bucket"]), "?") for b in buckets
    }
    lines = [
        "| method | metric | " + " | ".join(f"{b} rater(s), n={counts[b]}" for b in buckets) + " |",
        "|" + "---|" * (len(buckets) + 2),
    ]
    for label, ev in _metric_rows(rows):
        for m in BUCKET_METRICS + (PRESENCE_BUCKET_METRICS if "presence" in ev else ()):
            cells = [_f(ev["per_bucket"].get(b, {}).get(m)) for b in buckets]
            lines.append(f"| {label} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def persona_matrix_table(ev: dict) -> str:
    """Persona (row) x rater (column) Dice with the diagonal in bold."""
    mat = ev.get("persona_rater_dice")
    if not mat:
        raise ResultsError("this evaluate JSON has no persona_rater_dice matrix")
    names = list(ev.get("rater_names") or [f"rater_{i + 1}" for i in range(len(mat[0]))])
    lines = ["| persona \\ rater | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for i, row in enumerate(mat):
        cells = [f"**{_f(v)}**" if i == j else _f(v) for j, v in enumerate(row)]
        lines.append(f"| {names[i] if i < len(names) else i} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paper_protocol_table(rows) -> str:
    """``evaluate --paper-protocol`` rows next to the published D-Persona LIDC figures, with the
    protocol differences stated under the table."""
    from .paper_protocol import PAPER_KEYS, PROTOCOL_DIFFERENCES, PUBLISHED

    not_paper = [label for label, ev in rows if ev.get("protocol") != "paper"]
    if not_paper:
        raise ResultsError(f"{not_paper[0]}: not an `evaluate --paper-protocol` file")
    lines = [
        "| method | outputs per image | images | " + " | ".join(PAPER_KEYS) + " |",
        "|" + "---|" * (len(PAPER_KEYS) + 3),
    ]
    for label, ev in rows:
        lines.append(
            f"| {label} | {ev.get('n_outputs', 'n/a')} | {ev.get('n_images')} | "
            + " | ".join(_f(ev.get(k)) for k in PAPER_KEYS)
            + " |"
        )
    for label, published in PUBLISHED:
        lines.append(f"| {label} | | 1,609 (4 folds) | " + " | ".join(_f(published.get(k)) for k in PAPER_KEYS) + " |")
    first = rows[0][1]
    head = (
        f"Data: {first.get('data')} (split {first.get('split')}): the {first.get('n_images')} of "
        f"{first.get('n_images_considered')} images every rater marked; one output set per image feeds every "
        "metric; dice_each_matched_mean = Hungarian-matched per-expert Dice; GED in the reference's convention."
    )
    return "\n\n".join([head, "\n".join(lines), "Published rows: " + PROTOCOL_DIFFERENCES])


def render(paths, personas: bool = False, paper: bool = False) -> str:
    rows = load_results(paths)
    if paper:
        return paper_protocol_table(rows)
    if personas:
        return "\n\n".join(f"**{label}**\n\n{persona_matrix_table(ev)}" for label, ev in rows)
    first = rows[0][1]
    subset = {"report": "; val, not used for selection", "select": "; the selection slices"}.get(
        first.get("subset"), ""
    )
    head = (
        f"Data: {first.get('data')} (split {first.get('split')}{subset}), {first.get('n_images')} images, "
        f"scored per {first.get('scored_per', 'image')}."
    )
    mixed = sorted({str(ev.get("subset", "all")) for _, ev in rows})
    if len(mixed) > 1:
        raise ResultsError(f"the files score different val subsets ({', '.join(mixed)}): one table per subset")
    return "\n\n".join([head, summary_table(rows), per_expert_table(rows), per_bucket_table(rows)])
