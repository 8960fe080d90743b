"""Evaluation: every metric of ``metrics.py`` on a dataset split, as JSON plus a markdown table.

Diverse-sample metrics (GED, Dice_soft, Dice_max, Dice_match) use ``model.sample(x, n)``;
per-expert Dice uses ``model.personalize(x)``. A D-Persona stage-II model is scored twice, both
labelled: on its stage-I prior samples and on its K expert outputs (``experts_*`` keys, as the
reference's stage-II evaluation), with its attention diagnostics (``diag_*``). 2D data are scored
per image; volumes are predicted slice by slice and scored per volume.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from . import metrics as M
from .batching import crop_slices, padded_batch
from .checkpoint import CheckpointError
from .data import SliceDataset, load_split, normalize_image, pad_to_multiple, rank_by_area
from .paper_protocol import evaluate_paper_protocol
from .precision import FP32, Precision, autocast, prepare_input, prepare_model, resolve_precision
from .presence_metrics import BUCKET_KEYS as PRESENCE_KEYS
from .presence_metrics import presence_calibration, presence_record, reliability_plot
from .protocol_split import SUBSET_NOTES, ItemSubset, subset_indices
from .split_choice import choose_split, count_all, split_summary

LOWER_IS_BETTER = {"ged", "ged_dpersona"}


SAMPLE_KEYS = ("ged", "ged_dpersona", "dice_soft", "dice_max", "dice_max_reverse", "dice_match")
LOWER_IS_BETTER |= {f"experts_{k}" for k in ("ged", "ged_dpersona")}
SELECTABLE = (
    SAMPLE_KEYS + ("dice_each_identity_mean", "dice_each_matched_mean") + tuple(f"experts_{k}" for k in SAMPLE_KEYS)
)
EXPERT_ROWS_LABEL = "stage II: the K expert outputs"
SAMPLE_ROWS_LABEL = "stage I: prior samples"


def is_stage2(model) -> bool:
    """A D-Persona stage-II model: its K expert outputs are scored as well as its prior samples."""
    return getattr(model, "method", None) == "dpersona" and getattr(model, "stage", 1) == 2


def higher_is_better(metric: str) -> bool:
    parts = metric.split("+")
    if any(p in LOWER_IS_BETTER for p in parts) and len(parts) > 1:
        raise ValueError(f"cannot combine lower-is-better metrics in {metric!r}")
    return parts[0] not in LOWER_IS_BETTER


def check_select_metric(name: str) -> str:
    """Validate a selection metric: one of SELECTABLE, or a sum like ``dice_max+dice_soft``."""
    bad = [p for p in name.split("+") if p not in SELECTABLE]
    if bad:
        raise ValueError(f"unknown selection metric {bad[0]!r}; choose from {', '.join(SELECTABLE)} (or a+b)")
    higher_is_better(name)
    return name


def metric_value(result: dict, name: str) -> float:
    """A scalar from an aggregate result; ``a+b`` sums metrics (the baselines' Dice_max + Dice_soft)."""
    value = sum(float(result[p]) for p in check_select_metric(name).split("+"))
    return value if math.isfinite(value) else (-math.inf if higher_is_better(name) else math.inf)


@torch.inference_mode()
def predict_batch(
    model, images: torch.Tensor, n_samples: int, generator: torch.Generator | None, precision: Precision = FP32
):
    """Sigmoid probabilities: samples (B, n, H, W) and personas (B, K, H, W), as numpy float32.
    The model runs under ``precision`` (autocast); probabilities and metrics are always fp32."""
    images = prepare_input(images, precision)
    with autocast(precision, images.device):
        samples = model.sample(images, n_samples, generator=generator)
        personas = model.personalize(images, generator=generator)
    return torch.sigmoid(samples.float()).cpu().numpy(), torch.sigmoid(personas.float()).cpu().numpy()


@torch.inference_mode()
def predict_presence(model, images: torch.Tensor, precision: Precision = FP32) -> np.ndarray | None:
    """P(rater k marks) (B, K) as numpy float32, or None for a model without a presence head."""
    if not model.capabilities.presence:
        return None
    images = prepare_input(images, precision)
    with autocast(precision, images.device):
        return model.presence(images).float().cpu().numpy()


def evaluate_items(
    model,
    items: SliceDataset | ItemSubset,
    *,
    n_samples: int = 10,
    device="cpu",
    batch_size: int = 16,
    max_images: int | None = None,
    seed: int = 0,
    progress=None,
    precision: Precision = FP32,
) -> dict:
    """Per-slice metrics over a SliceDataset (used for validation during training)."""
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    n = len(items) if max_images is None else min(len(items), max_images)
    results, matrices, experts, diags, presence = [], [], [], [], []
    stage2 = is_stage2(model)
    for start in range(0, n, batch_size):
        idx = range(start, min(start + batch_size, n))
        raws = [items.raw(i) for i in idx]
        x, crops = padded_batch(raws, device)
        samples, personas = predict_batch(model, x, n_samples, gen, precision)
        probs = predict_presence(model, x, precision)
        if stage2:
            diags.append((len(raws), _diagnostics(model, x, gen)))
        for b, ((_, masks, valid), sl) in enumerate(zip(raws, crops)):
            pers = personas[b][:, sl[0], sl[1]]
            results.append(M.evaluate_image(masks, samples[b][:, sl[0], sl[1]], valid, pers))
            if probs is not None:
                presence.append(presence_record(probs[b], masks, valid))
            matrices.append(persona_rater_dice(masks, valid, pers))
            if stage2:
                experts.append(M.evaluate_image(masks, pers, valid, pers))
        if progress:
            progress(min(start + batch_size, n), n)
    model.train(was_training)
    buckets = range(1, len(items.rater_names) + 1)
    agg = _with_identity_matrix(results, matrices, M.aggregate(results, buckets=buckets))
    if presence:
        prior = (model.config.get("presence") or {}).get("train_frequency")
        _with_presence(agg, presence_calibration(presence, [r["n_marked"] for r in results], prior, buckets))
    return _with_experts(agg, experts, diags, buckets)


def _with_presence(agg: dict, calibration: dict) -> None:
    """Presence calibration as flat keys overall and per bucket, the full block under ``presence``."""
    agg["presence"] = calibration
    for key in PRESENCE_KEYS:
        agg[key] = calibration[key]
        for b, v in calibration["per_bucket"].items():
            agg["per_bucket"].setdefault(b, {})[key] = v[key]
    agg["conventions"]["presence"] = (
        "presence_brier: mean (P(rater k marks) - [rater k drew])^2 over valid raters; presence_brier_prior: the "
        "same for the constant prior (each rater's marking frequency on train); presence_expected: sum_k "
        "P(rater k marks) against presence_true, the number of raters that marked"
    )


@torch.inference_mode()
def _diagnostics(model, x, gen) -> dict:
    return model.diagnostics(x, generator=gen)


def _with_experts(agg: dict, experts: list[dict], diags: list, buckets) -> dict:
    """Stage II: the K expert outputs scored as a set (``experts_*``), labelled next to the prior
    samples' rows; per-rater identity Dice and the attention diagnostics as flat keys."""
    for k, v in enumerate(agg.get("dice_each_identity", [])):
        agg[f"dice_each_identity_{k + 1}"] = float(v)
    if not experts:
        return agg
    e = M.aggregate(experts, buckets=buckets)
    agg["experts"] = {key: e[key] for key in SAMPLE_KEYS}
    agg["experts"]["per_bucket"] = {b: {key: v[key] for key in SAMPLE_KEYS} for b, v in e["per_bucket"].items()}
    agg.update({f"experts_{key}": float(e[key]) for key in SAMPLE_KEYS})
    agg["row_labels"] = {"samples": SAMPLE_ROWS_LABEL, "experts": EXPERT_ROWS_LABEL}
    agg["conventions"]["experts"] = (
        f"experts_* ({EXPERT_ROWS_LABEL}): the diverse-sample metrics computed on the "
        "K personalized outputs as the sample set (the reference's stage-II evaluation)"
    )
    total = sum(w for w, _ in diags)
    if total:
        for key in diags[0][1]:
            agg[f"diag_{key}"] = float(sum(w * d[key] for w, d in diags) / total)
        agg["conventions"]["diagnostics"] = (
            "diag_q_norm_k = |q_k|; diag_attn_entropy_k = attention entropy / log N (1 = uniform over the N "
            "prior codes, 0 = one code); diag_attn_max_k = largest weight; diag_z_spread = mean pairwise "
            "distance of the K attended codes / |prior sigma| (0 = every persona uses the same code)"
        )
    return agg


def persona_rater_dice(labels, valid, personas) -> np.ndarray:
    """(K personas, K raters) Dice at 0.5; columns of missing raters are NaN."""
    k = len(labels)
    out = np.full((personas.shape[0], k), np.nan)
    d = M.dice_matrix(labels, personas, valid)  # (K_valid, K personas)
    out[:, np.asarray(valid, bool)] = d.T
    return out


def _with_identity_matrix(results: list[dict], matrices: list[np.ndarray], agg: dict) -> dict:
    """Add the persona-by-rater Dice matrix (mean over images where the rater is valid)."""
    if matrices:
        with np.errstate(invalid="ignore"):
            stack = np.stack(matrices)
            mean = np.nanmean(stack, axis=0) if np.isfinite(stack).any() else stack[0]
        agg["persona_rater_dice"] = [[float(v) for v in row] for row in mean]
        agg["conventions"]["persona_rater_dice"] = (
            "row = personalized output k, column = rater j: Dice at 0.5, averaged over images where rater j "
            "is valid; the diagonal is dice_each_identity"
        )
    return agg


def evaluate_volumes(
    model,
    dataset,
    window,
    *,
    rank_raters: bool,
    n_samples: int,
    device="cpu",
    batch_size: int = 16,
    max_images: int | None = None,
    seed: int = 0,
    progress=None,
    precision: Precision = FP32,
) -> dict:
    """Per-volume metrics: every slice predicted, stacked, scored as one volume."""
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    results, matrices, experts = [], [], []
    stage2 = is_stage2(model)
    for i in range(n):
        case = dataset[i]
        vol = normalize_image(case.image, window)
        samples, personas = [], []
        for z0 in range(0, vol.shape[0], batch_size):
            chunk = vol[z0 : z0 + batch_size]
            padded = [pad_to_multiple(s, np.zeros((1, *s.shape), np.uint8), 16)[0] for s in chunk]
            x = torch.from_numpy(np.stack(padded))[:, None].to(device)
            s, p = predict_batch(model, x, n_samples, gen, precision)
            sl = crop_slices(padded[0].shape, chunk.shape[1:])
            samples.append(s[:, :, sl[0], sl[1]])
            personas.append(p[:, :, sl[0], sl[1]])
        samples = np.concatenate(samples).transpose(1, 0, 2, 3)  # (n, Z, H, W)
        personas = np.concatenate(personas).transpose(1, 0, 2, 3)
        masks, valid = case.masks, case.valid
        if rank_raters:
            masks, valid = rank_by_area(masks, valid)
        results.append(M.evaluate_image(masks, samples, valid, personas))
        matrices.append(persona_rater_dice(masks, valid, personas))
        if stage2:
            experts.append(M.evaluate_image(masks, personas, valid, personas))
        if progress:
            progress(i + 1, n)
    buckets = range(1, dataset[0].n_raters + 1) if n else None
    agg = _with_identity_matrix(results, matrices, M.aggregate(results, buckets=buckets))
    return _with_experts(agg, experts, [], buckets)


def markdown_table(result: dict, title: str = "") -> str:
    """The evaluation as a markdown table with the metric conventions stated under it."""
    rows = [
        f"### {title}" if title else "",
        "",
        "| metric | all |" + "".join(f" {b} rater(s) |" for b in result["per_bucket"]),
        "|---|---|" + "---|" * len(result["per_bucket"]),
    ]
    experts = result.get("experts")
    for key in SAMPLE_KEYS + ("dice_each_identity_mean", "dice_each_matched_mean"):
        cells = [_f(result.get(key))] + [_f(b.get(key)) for b in result["per_bucket"].values()]
        label = f"{key} ({SAMPLE_ROWS_LABEL})" if experts and key in SAMPLE_KEYS else key
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    for key in PRESENCE_KEYS if "presence" in result else ():
        cells = [_f(result.get(key))] + [_f(b.get(key)) for b in result["per_bucket"].values()]
        rows.append(f"| {key} | " + " | ".join(cells) + " |")
    for key in SAMPLE_KEYS if experts else ():
        cells = [_f(experts.get(key))] + [_f(experts["per_bucket"].get(b, {}).get(key)) for b in result["per_bucket"]]
        rows.append(f"| {key} ({EXPERT_ROWS_LABEL}) | " + " | ".join(cells) + " |")
    rows.append(
        "| n_images | "
        + " | ".join([str(result["n_images"])] + [str(b["n_images"]) for b in result["per_bucket"].values()])
        + " |"
    )
    for key in ("dice_each_identity", "dice_each_matched"):
        rows.append(f"\n{key} per rater: " + ", ".join(_f(v) for v in result.get(key, [])))
    matrix = result.get("persona_rater_dice")
    if matrix:
        names = result.get("rater_names") or [str(i + 1) for i in range(len(matrix))]
        rows += [
            "\npersona (row) x rater (column) Dice:\n",
            "| persona \\ rater | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        rows += [f"| {name} | " + " | ".join(_f(v) for v in row) + " |" for name, row in zip(names, matrix)]
    diag = {k[5:]: v for k, v in result.items() if k.startswith("diag_")}
    if diag:
        rows.append("\nstage II attention diagnostics: " + ", ".join(f"{k}={v:.3f}" for k, v in diag.items()))
    rows.append(f"\nsamples per image: {result['n_samples']}")
    rows.append("\nConventions:")
    rows += [f"- {k}: {v}" for k, v in result["conventions"].items()]
    return "\n".join(rows)


def _f(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.4f}"


def align_raters(dataset, model_raters: list[str], ranked: bool) -> None:
    """Make the dataset's rater order the model's, so persona k is scored against rater k.

    Area-ranked models (LIDC) only need the same number of raters. Otherwise the rater names must
    be the same set; a case-folder dataset is re-ordered to the model's order."""
    names = list(dataset.rater_names)
    if ranked or names == model_raters:
        if len(names) != len(model_raters):
            raise ValueError(f"the data has {len(names)} raters, the model {len(model_raters)}")
        return
    if sorted(names) != sorted(model_raters):
        raise ValueError(f"the data's raters {names} are not the model's raters {model_raters}")
    if not hasattr(dataset, "load_case"):
        raise ValueError(f"the data's raters {names} are in another order than the model's {model_raters}")
    dataset.rater_names = list(model_raters)


def _items(dataset, window, rank: bool, args) -> SliceDataset | ItemSubset:
    """The 2D items to score: ``--subset`` select / report of the split, at most ``--max-images``."""
    subset = getattr(args, "subset", "all")
    if subset == "all":
        return SliceDataset(dataset, window, rank_raters=rank, augment=None, max_cases=args.max_images)
    items = SliceDataset(dataset, window, rank_raters=rank, augment=None)
    return ItemSubset(items, subset_indices(len(items), subset, args.max_images))


def _subset_note(args) -> str:
    subset = getattr(args, "subset", "all")
    return "" if subset == "all" else f"; {SUBSET_NOTES[subset]}"


def run_human_reference(args) -> int:
    """``multirater evaluate --human-reference``: leave-one-rater-out inter-rater agreement."""
    from .human_reference import human_reference

    split, how = choose_split(args.data, args.split)
    dataset = load_split(args.data, None if split == "all" else split)
    if len(dataset) and dataset[0].image.ndim == 3:
        raise ValueError("--human-reference scores 2D slices; this dataset holds volumes")
    rank = bool(getattr(dataset, "patient", None) is not None)  # LIDC shards: raters ranked by area, as for training
    window = getattr(dataset, "intensity_window", None) or [0, 255]
    items = _items(dataset, window, rank, args)
    result = human_reference(items)
    where = split_summary(split, how, result["n_images"], count_all(args.data), "image") + _subset_note(args)
    result.update(
        {
            "data": str(args.data),
            "split": split,
            "split_note": where,
            "method": "human reference (leave-one-rater-out)",
            "subset": getattr(args, "subset", "all"),
            "scored_per": "image",
            "raters_ranked_by_area": rank,
            "rater_names": [f"expert_{k + 1}" for k in range(len(items.rater_names))]
            if rank
            else list(items.rater_names),
        }
    )
    return _report(result, args, rank, f"human reference on {args.data}, {where}")


def _report(result: dict, args, rank: bool, title: str) -> int:
    """State the rater-identity convention, write ``--json`` and print the markdown table."""
    if rank:
        result["conventions"]["rater_identity"] = "raters ranked by area per image: expert k = k-th smallest annotation"
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        from napari_multirater.io.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(_jsonable(result), indent=2) + "\n")
    print(markdown_table(result, title))
    return 0


def resolve_checkpoint(name_or_path) -> Path:
    """A checkpoint file, or the name of a bundled / cached model (``lidc_dpersona``)."""
    from napari_multirater.modelfiles.registry import find_model, is_model_name

    if not is_model_name(name_or_path):
        return Path(str(name_or_path)).expanduser()  # a path: load_checkpoint reports it if missing
    try:
        return find_model(str(name_or_path))
    except FileNotFoundError as e:
        raise CheckpointError(str(e)) from None


def run_evaluate(args) -> int:
    if args.json:  # before any work: the JSON never replaces the data / checkpoint, nor silently a result
        from napari_multirater.io.outputs import check_output_file

        inputs = [args.data, getattr(args, "checkpoint", None)]
        check_output_file(args.json, inputs, overwrite=getattr(args, "overwrite", False), flag="--json")
    if getattr(args, "human_reference", False):
        return run_human_reference(args)
    from .checkpoint import load_checkpoint
    from .runtime import pick_device

    device = pick_device(args.device)
    precision = resolve_precision(getattr(args, "precision", "auto"), device)
    model, card = load_checkpoint(resolve_checkpoint(args.checkpoint), map_location=device)
    prepare_model(model.to(device).eval(), precision)
    split, how = choose_split(args.data, args.split)
    dataset = load_split(args.data, None if split == "all" else split)
    window = (card.get("intensity") or {}).get("window") or getattr(dataset, "intensity_window", None) or [0, 255]
    rank = bool(card.get("raters_ranked_by_area", False))
    n_samples = args.samples or int(card.get("val_samples", 0) or 10)
    if getattr(args, "paper_protocol", False) and args.samples:
        raise ValueError("--paper-protocol fixes each method's output set (model.reference_outputs); drop --samples")
    align_raters(dataset, list(model.rater_names), rank)

    def progress(done, total):
        if sys.stderr.isatty() or done == total or done % 200 == 0:
            print(f"\revaluating {done}/{total}", end="" if sys.stderr.isatty() else "\n", file=sys.stderr, flush=True)

    volumetric = len(dataset) and dataset[0].image.ndim == 3
    if volumetric and getattr(args, "subset", "all") != "all":
        raise ValueError("--subset splits 2D slices (the LIDC val slices); this dataset holds volumes")
    if getattr(args, "paper_protocol", False):
        if volumetric:
            raise ValueError(
                "--paper-protocol scores 2D slices (the papers' LIDC protocol); this dataset holds volumes"
            )
        items = _items(dataset, window, rank, args)
        result = evaluate_paper_protocol(
            model, items, device=device, seed=args.seed, progress=progress, precision=precision
        )
    elif volumetric:
        result = evaluate_volumes(
            model,
            dataset,
            window,
            rank_raters=rank,
            n_samples=n_samples,
            device=device,
            max_images=args.max_images,
            seed=args.seed,
            progress=progress,
            precision=precision,
        )
    else:
        items = _items(dataset, window, rank, args)
        result = evaluate_items(
            model, items, n_samples=n_samples, device=device, seed=args.seed, progress=progress, precision=precision
        )
    result.update(
        {
            "checkpoint": str(args.checkpoint),
            "data": str(args.data),
            "split": split,
            "method": card.get("method"),
            "stage": card.get("stage"),
            "scored_per": "volume" if volumetric else "image",
            "raters_ranked_by_area": rank,
            "seed": args.seed,
            "rater_names": list(model.rater_names),
            "precision": precision.describe(),
        }
    )
    result["conventions"]["scored_per"] = "volume (all slices together)" if volumetric else "2D image"
    result["split_note"] = split_summary(
        split, how, result["n_images"], count_all(args.data), result["scored_per"]
    ) + _subset_note(args)
    result["subset"] = getattr(args, "subset", "all")
    if getattr(args, "presence_plot", None):
        if "presence" not in result:
            raise ValueError("--presence-plot: this model has no presence head (capabilities.presence is False)")
        where = f"{result['n_images']} {split} slices" + (f" ({result['subset']})" if result["subset"] != "all" else "")
        reliability_plot(result["presence"], args.presence_plot, f"{card.get('method')}: {where}")
    return _report(result, args, rank, f"{card.get('method')} on {args.data}, {result['split_note']}")


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (np.floating, np.integer)):
        return _jsonable(obj.item())
    return obj
