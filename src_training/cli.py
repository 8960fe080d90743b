"""``multirater train``, ``evaluate``, ``export`` and ``results`` (train/evaluate flags are a fixed contract)."""

from __future__ import annotations

import sys

from napari_multirater.argtypes import MAX_SAMPLES, POSITIVE_FLOAT, POSITIVE_INT, SEED, int_at_least

SAMPLES = int_at_least(1, hi=MAX_SAMPLES)  # each sample is a full-size map: bounded before allocating

PRECISION_CHOICES = ("auto", "fp32", "bf16")  # == precision.PRECISION_CHOICES (kept import-light)
METHOD_CHOICES = ("unet", "prob_unet", "dpersona", "proseg", "umanet", "pionono")
SUBSETS = ("all", "select", "report")  # == protocol_split.SUBSETS


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a multi-rater model (val each epoch, best.pt on val, --resume)")
    p.add_argument("--method", required=True, choices=METHOD_CHOICES)
    p.add_argument("--data", required=True, help="LIDC shard folder or .npz, case-folder or phantom dataset")
    p.add_argument("--config", help="JSON config merged over src_training/configs/<method>.json")
    p.add_argument("--out", required=True, help="run folder: last.pt, best.pt, log.csv, val.csv")
    p.add_argument("--epochs", type=POSITIVE_INT)
    p.add_argument("--max-steps", type=POSITIVE_INT, help="stop after this many optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=POSITIVE_INT)
    p.add_argument("--lr", type=POSITIVE_FLOAT)
    p.add_argument("--seed", type=SEED)
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run in --out (its checkpoints and logs); without it or --resume an "
        "existing run is refused",
    )
    p.add_argument("--stage1", help="D-Persona stage II: start from this stage I checkpoint")
    p.add_argument("--val-samples", type=SAMPLES, help="samples per image for validation metrics")
    p.add_argument("--val-max-images", type=POSITIVE_INT, help="validate on at most N val images")
    p.add_argument("--select-metric", help="val metric that picks best.pt (default from the config)")
    p.add_argument("--save-every", type=POSITIVE_INT, help="save last.pt every N steps (and every epoch)")
    p.add_argument("--val-every", type=POSITIVE_INT, help="also validate (and keep the best on val) every N steps")
    p.add_argument("--no-augment", action="store_true", help="disable flips/rotations/intensity augmentation")
    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        help="auto (default: bf16 autocast + channels_last on CPUs with native bf16 and on CUDA, "
        "else fp32), fp32, bf16",
    )
    p.add_argument(
        "--rank-raters",
        choices=["auto", "on", "off"],
        help="sort raters by area (LIDC convention; auto = on for LIDC shards)",
    )
    p.set_defaults(func=_train)


def add_evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="all multi-rater metrics of a checkpoint on a split, as JSON + table")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="checkpoint file, or the name of a bundled / cached model")
    what.add_argument(
        "--human-reference",
        action="store_true",
        help="score every rater against the other raters (leave-one-rater-out) instead of a model",
    )
    p.add_argument("--data", required=True)
    p.add_argument(
        "--split",
        default=None,
        help="val, train or all (default: the data's declared val split, "
        "else all of it; the summary says which and how many)",
    )
    p.add_argument(
        "--samples", type=SAMPLES, default=None, help=f"diverse samples per image (default 10, at most {MAX_SAMPLES})"
    )
    p.add_argument("--json", help="write the metrics JSON here (never over the data or the checkpoint)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--max-images", type=POSITIVE_INT)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="auto",
        help="model precision: auto (bf16 where the CPU/GPU computes it natively), fp32, bf16; metrics are always fp32",
    )
    p.add_argument(
        "--paper-protocol",
        action="store_true",
        help="the papers' protocol: only slices every rater marked, each method's reference output "
        "set feeding every metric, Hungarian per-expert Dice (docs/training.md, 'Two protocols')",
    )
    p.add_argument(
        "--subset",
        choices=SUBSETS,
        default="all",
        help="select: the first 600 slices of the split (what training selects on); report: the others "
        "(val, not used for selection); all (default)",
    )
    p.add_argument("--presence-plot", help="write the presence reliability diagram (PNG) here")
    p.set_defaults(func=_evaluate)


def add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a shippable copy of a checkpoint: weights + config + card, no optimizer")
    p.add_argument("--checkpoint", required=True, help="training checkpoint (e.g. RUN/best.pt)")
    p.add_argument(
        "--out", required=True, help="output .pt (e.g. napari_multirater/models/NAME.pt); never the --checkpoint"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out checkpoint (not the input)")
    p.add_argument("--fp16", action="store_true", help="store float weights as fp16 (loaded back as fp32)")
    p.add_argument("--eval-json", help="`multirater evaluate --json` output to record in the model card")
    p.add_argument("--note", action="append", default=[], help="free-text line for the card's notes (repeatable)")
    p.add_argument(
        "--config",
        help="JSON merged over the model's config: inference options only (e.g. D-Persona heads.bank_seed); "
        "the weights must still load",
    )
    p.set_defaults(func=_export)


def _export(args) -> int:
    import json
    from pathlib import Path

    from napari_multirater.io.outputs import check_output_file

    from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    try:  # before any work: never over the original (even with --overwrite), nor silently over another
        evals = [args.eval_json] if args.eval_json and Path(args.eval_json).is_file() else []
        check_output_file(args.out, [args.checkpoint, *evals], overwrite=args.overwrite)
        model, card = load_checkpoint(args.checkpoint)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    card = dict(card)
    if args.config:
        try:
            model = _with_config(model, json.loads(Path(args.config).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError, ValueError) as e:
            print(f"error: --config {args.config}: {e}", file=sys.stderr)
            return 2
    if args.eval_json:
        try:
            ev = json.loads(Path(args.eval_json).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            print(f"error: cannot read {args.eval_json}: {e}", file=sys.stderr)
            return 2
        from .metrics import LIST_KEYS, SCALAR_KEYS
        from .presence_metrics import BUCKET_KEYS as PRESENCE_KEYS

        run_keys = ("persona_rater_dice", "per_bucket", "n_images", "n_samples", "split", "subset", "data")
        keep = SCALAR_KEYS + LIST_KEYS + PRESENCE_KEYS + run_keys + ("conventions", "seed", "split_note")
        card["evaluation"] = {k: ev[k] for k in keep if k in ev}
        subset = f" --subset {ev['subset']}" if ev.get("subset", "all") != "all" else ""
        card["evaluation"]["command"] = (
            f"multirater evaluate --checkpoint {Path(args.out).stem} --data {ev.get('data')} "
            f"--split {ev.get('split')}{subset} --samples {ev.get('n_samples')} --seed {ev.get('seed', 0)}"
        )
    if args.note:
        card["notes"] = list(card.get("notes") or []) + list(args.note)
    card["exported_from"] = Path(args.checkpoint).name
    out = save_checkpoint(args.out, model, card, fp16=args.fp16)
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({size:.1f} MB{', fp16' if args.fp16 else ''})")
    if size > 10:
        print("warning: over the 10 MB limit for a model bundled with the plugin", file=sys.stderr)
    return 0


def add_fit_presence_parser(sub) -> None:
    p = sub.add_parser(
        "fit-presence",
        help="add a per-rater presence head (P(rater k marks a lesion)) to a trained model; only the head is fitted",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file, or the name of a bundled model")
    p.add_argument("--data", required=True, help="the data the model was trained on (train: fit, val: select)")
    p.add_argument("--out", required=True, help="output checkpoint (then `multirater export` it)")
    p.add_argument("--steps", type=POSITIVE_INT, default=1500, help="full-batch Adam steps on the pooled features")
    p.add_argument("--lr", type=POSITIVE_FLOAT, default=3e-3)
    p.add_argument("--hidden", type=POSITIVE_INT, default=32)
    p.add_argument(
        "--inputs",
        choices=("bottleneck", "all_levels"),
        default="all_levels",
        help="what the head reads: every encoder block and the output features (default; LIDC selection Brier "
        "0.145 against 0.152 for the bottleneck alone), or the deepest encoder block",
    )
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--max-train-images", type=POSITIVE_INT, help="use only the first N train slices")
    p.add_argument(
        "--features-cache",
        help="file to keep the pooled bottleneck features in, reused when it matches (default: OUT.features.pt)",
    )
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="auto")
    p.set_defaults(func=_fit_presence)


def _one_line_errors(run, args) -> int:
    """``run(args)``; a bad dataset, checkpoint or value is one ``error:`` line and exit code 2."""
    from napari_multirater.datasets.case import DatasetError

    from .checkpoint import CheckpointError

    try:
        return run(args)
    except (DatasetError, CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _fit_presence(args) -> int:
    from .presence_fit import run_fit_presence

    return _one_line_errors(run_fit_presence, args)


def _with_config(model, overlay: dict):
    """``model`` rebuilt with ``overlay`` merged over its config and the same weights (strict)."""
    from .models.base import deep_merge
    from .models.registry import build_model

    if not isinstance(overlay, dict):
        raise ValueError("the config overlay must be a JSON object")
    out = build_model(deep_merge(model.config, overlay))
    try:
        out.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError as e:
        raise ValueError(f"the weights no longer load with this config: {str(e).splitlines()[0]}") from None
    return out.eval()


def add_results_parser(sub) -> None:
    p = sub.add_parser("results", help="markdown results tables from several `evaluate --json` files")
    p.add_argument("json", nargs="+", help="evaluate JSON files, one table row each (in this order)")
    p.add_argument("--personas", action="store_true", help="persona x rater Dice matrix per file instead")
    p.add_argument(
        "--paper-protocol",
        action="store_true",
        help="table of `evaluate --paper-protocol` files next to the published D-Persona LIDC figures",
    )
    p.set_defaults(func=_results)


def _results(args) -> int:
    from .results_table import ResultsError, render

    try:
        print(render(args.json, personas=args.personas, paper=args.paper_protocol))
    except ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _train(args) -> int:
    from napari_multirater.datasets.case import DatasetError

    from .train import run_training

    try:
        return run_training(args)
    except (DatasetError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _evaluate(args) -> int:
    from .evaluate import run_evaluate

    return _one_line_errors(run_evaluate, args)


def add_parser(sub) -> None:
    add_train_parser(sub)
    add_evaluate_parser(sub)
    add_export_parser(sub)
    add_fit_presence_parser(sub)
    add_results_parser(sub)
