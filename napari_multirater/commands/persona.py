"""``multirater persona add`` (learn a rater's style as a new persona) and ``multirater queue``
(which cases a rater should annotate next). Bad input: exit code 2 and one line."""

from __future__ import annotations

import argparse
import sys

from ..argtypes import POSITIVE_FLOAT, POSITIVE_INT, SEED, fail


def add_parser(sub) -> None:
    p = sub.add_parser("persona", help="learn a rater's style as a new persona of a model")
    psub = p.add_subparsers(dest="persona_command", metavar="ACTION")
    a = psub.add_parser(
        "add",
        help="fit one new persona from a rater's masks in an annotation project "
        "(everything else frozen) and write it as a NEW checkpoint",
    )
    a.add_argument("--checkpoint", required=True, help="checkpoint file, or the name of a bundled / cached model")
    a.add_argument("--data", required=True, help="annotation project (case folder with dataset.json)")
    a.add_argument("--rater", required=True, help="the rater id whose saved masks define the style")
    a.add_argument("--out", required=True, help="the new checkpoint (.pt); never the original")
    a.add_argument("--steps", type=POSITIVE_INT, default=None, help="optimizer steps (default 150)")
    a.add_argument(
        "--lr",
        type=POSITIVE_FLOAT,
        default=None,
        help="learning rate of the new persona (default: the method's, e.g. Pionono 0.1, else twice its "
        "latent learning rate)",
    )
    a.add_argument("--seed", type=SEED, default=0, help="seed of the held-out split and the fit")
    a.set_defaults(func=_persona_add)
    p.set_defaults(
        func=lambda args: fail("choose an action: multirater persona add ... (see multirater persona --help)")
    )

    q = sub.add_parser("queue", help="the cases a rater should annotate next, most useful first")
    q.add_argument("--data", required=True, help="annotation project (case folder with dataset.json)")
    q.add_argument("--rater", required=True, help="rater id")
    q.add_argument("--checkpoint", help="rank by this model's disagreement (else by the raters' disagreement)")
    q.add_argument("--limit", type=POSITIVE_INT, default=None, help="show at most N cases")
    q.set_defaults(func=_queue)


def _persona_add(args) -> int:
    from ..datasets.case import DatasetError
    from ..datasets.case_folder import check_identifier
    from ..inference.persona_fit import (
        DEFAULT_STEPS,
        NoPersonas,
        PersonaFitError,
        iter_add_persona,
    )
    from ..progress import run_to_completion

    try:
        check_identifier(args.rater, "rater id")
    except DatasetError as e:
        return fail(str(e))
    steps = args.steps or DEFAULT_STEPS

    def show(p):
        if p.message and (p.total is None or p.done % max(1, (p.total or 1) // 10) == 0 or p.done == p.total):
            print(f"  {p.message}", file=sys.stderr, flush=True)

    try:
        report = run_to_completion(
            iter_add_persona(args.checkpoint, args.data, args.rater, args.out, steps, seed=args.seed, lr=args.lr), show
        )
    except NoPersonas as e:
        rep = getattr(e, "report", None)
        if rep:
            for name, d in rep["dice"].items():
                print(f"{name}\tDice {d:.3f}")
            print(rep["text"])
        return fail(str(e))
    except (PersonaFitError, DatasetError) as e:
        return fail(str(e))
    print("persona\theld-out identity Dice vs " + report["rater"])
    for name, d in report["held_out_dice"].items():
        mark = "  (new)" if name == report["persona"] else ""
        print(f"{name}\t{d:.3f}{mark}")
    print(report["text"])
    print(f"wrote {report['out']} (personas: {', '.join(report['held_out_dice'])})")
    return 0


def _queue(args) -> int:
    from ..annotation.queue import build_queue, collection_settings, drafts_line, enough_raters, iter_model_disagreement
    from ..annotation.store import AnnotationStore
    from ..datasets.case import DatasetError
    from ..datasets.case_folder import check_identifier
    from ..progress import run_to_completion

    try:
        check_identifier(args.rater, "rater id")
        store = AnnotationStore(args.data)
    except DatasetError as e:
        return fail(f"{args.data}: {e}" if "rater id" not in str(e) else str(e))
    scores = None
    if args.checkpoint:
        from ..inference.engine import InferenceEngine, ModelLoadError

        try:
            engine = InferenceEngine.load(args.checkpoint, device="cpu")
        except ModelLoadError as e:
            return fail(str(e))
        todo = [c for c in store.case_ids() if not store.has_mask(c, args.rater)]
        try:
            scores = run_to_completion(iter_model_disagreement(engine, store, todo))
        except (DatasetError, ValueError) as e:
            return fail(str(e))
    try:
        queue = build_queue(store, args.rater, scores)
        k, n = enough_raters(store)
    except DatasetError as e:
        return fail(str(e))
    print(f"{k} of {n} cases have enough raters")
    drafts = drafts_line(store)
    if drafts:
        print(drafts)
    if not queue:
        print(f"nothing left for {args.rater}: every case is annotated")
        return 0
    announce = collection_settings(store)["announce_repeats"]
    for e in queue[: args.limit or len(queue)]:
        kind = "REPEAT" if e.repeat and announce else "case"
        print(f"{e.rank:3d}. {e.case_id}\t{kind}\t{e.reason}")
    return 0


def main(argv=None) -> int:  # pragma: no cover - convenience
    p = argparse.ArgumentParser(prog="multirater")
    add_parser(p.add_subparsers())
    args = p.parse_args(argv)
    return args.func(args)
