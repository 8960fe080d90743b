"""``multirater predict``: run a checkpoint on an image file or DICOM folder and write the outputs
(samples, personas, mean probability, uncertainty maps) with the input geometry."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from ..argtypes import (
    MAX_SAMPLES,
    MIN_SPACING_MM,
    NONNEG_INT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    SEED,
    float_list,
    int_at_least,
    int_list,
)
from .defaults import DEFAULT_SAMPLES

FORMATS = ("nii.gz", "nrrd", "mha")


def _ints(values: list[int], n: int, what: str) -> list[int]:
    if len(values) != n:
        raise ValueError(f"{what} needs {n} comma-separated integers, got {','.join(map(str, values))}")
    return list(values)


def _spacing(text: str):
    if text.strip().lower() == "native":
        return "native"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a pixel size in mm or 'native', got {text!r}") from None
    if not (value >= MIN_SPACING_MM and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"pixel size must be a number of mm >= {MIN_SPACING_MM:g}, got {text!r}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="run a model on an image / DICOM series and write samples, personas, uncertainty",
        description=__doc__,
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file or the name of a bundled/cached model")
    p.add_argument("--image", required=True, help="image file (.nii.gz, .nrrd, .mha, ...) or DICOM series folder")
    p.add_argument(
        "--out",
        required=True,
        help="output folder (created complete, or not at all; never the image's folder)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier prediction in --out (a folder with prediction.json) as a whole",
    )
    p.add_argument(
        "--samples",
        type=int_at_least(0, hi=MAX_SAMPLES),
        default=DEFAULT_SAMPLES,
        help=f"number of diverse samples (default {DEFAULT_SAMPLES}; 0 = none; at most {MAX_SAMPLES})",
    )
    p.add_argument("--personas", action="store_true", help="also write one mask per rater persona")
    p.add_argument("--no-uncertainty", action="store_true", help="do not write uncertainty maps")
    roi = p.add_mutually_exclusive_group()
    roi.add_argument(
        "--roi", type=int_list(4, 6), help="box in voxel indices z0,y0,x0,z1,y1,x1 (end exclusive; 2D: y0,x0,y1,x1)"
    )
    roi.add_argument(
        "--roi-point", type=float_list(2, 3), help="box centre in physical mm z,y,x (2D: y,x), with --roi-size-mm"
    )
    p.add_argument("--roi-size-mm", type=POSITIVE_FLOAT, default=64.0, help="edge length of the --roi-point box (mm)")
    p.add_argument("--slice", type=NONNEG_INT, default=None, help="only this axial slice index of a volume")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="auto (default): bf16 autocast + channels_last where the CPU/GPU computes bf16 natively, else fp32",
    )
    p.add_argument("--format", default="nii.gz", choices=FORMATS, help="output file format")
    p.add_argument(
        "--image-units",
        default="auto",
        choices=("auto", "HU", "raw"),
        help="auto: uint8 images are raw model units, others Hounsfield units",
    )
    p.add_argument(
        "--lidc-mapping",
        default="fixed",
        choices=("fixed", "minmax"),
        help="HU -> LIDC 8-bit mapping for LIDC-trained models (see modelfiles.intensity)",
    )
    p.add_argument(
        "--target-spacing-mm",
        type=_spacing,
        default=None,
        help="in-plane pixel size (mm) the model runs at, or 'native' (default: the model card's "
        "input.pixel_size_mm, i.e. the training resolution, else native spacing)",
    )
    p.add_argument(
        "--batch-slices",
        type=POSITIVE_INT,
        default=1,
        help="slices per model call (default 1: progress and a time-left estimate after every slice)",
    )
    p.add_argument(
        "--allow-nonuniform",
        action="store_true",
        help="run on a DICOM series with gaps / non-uniform slice spacing (outputs are then placed "
        "on a uniform grid and may be off by up to the gap); refused by default",
    )
    p.add_argument(
        "--float-maps",
        action="store_true",
        help="write probability / uncertainty maps as float32 (default: 8-bit, value = round(255 p))",
    )
    p.set_defaults(func=run)


def _progress_printer():
    tty = sys.stderr.isatty()

    def show(item):
        total = item.total or 0
        line = f"predict: {item.done}/{total} {item.message}"
        if tty:
            print("\r" + line.ljust(70), end="" if item.done < total else "\n", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    return show


def _roi(args, ndim: int):
    from .roi import ROI

    if args.roi:
        if ndim == 2:
            y0, x0, y1, x1 = _ints(args.roi, 4, "--roi for a 2D image")
            return ROI.rect(None, y0, x0, y1, x1)
        return ROI.box(*_ints(args.roi, 6, "--roi"))
    if args.roi_point:
        if len(args.roi_point) not in (ndim, 3):
            raise ValueError(
                f"--roi-point needs {'z,y,x' if ndim == 3 else 'y,x'} in mm for a {ndim}D image, "
                f"got {len(args.roi_point)} numbers"
            )
        return ROI.point(list(args.roi_point), args.roi_size_mm)
    return None


def _input_advice(engine, image, geometry) -> list[str]:
    """The Model dock's input guidance for a run without an ROI: the image is much larger than the
    model's training field of view (e.g. a whole CT slice for a nodule-crop model)."""
    from . import model_info

    spacing = tuple(abs(float(v)) for v in geometry.scale_zyx[-2:])
    fov = engine.field_of_view()
    text = model_info.input_advice(fov, image.shape[-2:], spacing, how=model_info.cli_roi_how(fov, spacing))
    return [text] if text else []


def run(args) -> int:
    from ..io import MedicalIOError, read_image, write_image
    from ..io.atomic import atomic_write_text
    from ..io.outputs import OutputError, check_output_folder, staged_output_folder
    from .engine import InferenceEngine, ModelLoadError
    from .presence_text import other_scores, presence_summary

    try:  # before any work: the outputs never replace an input or, without --overwrite, a result
        out = check_output_folder(
            args.out, [args.image, args.checkpoint], overwrite=args.overwrite, marker="prediction.json"
        )
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        engine = InferenceEngine.load(
            args.checkpoint,
            device=args.device,
            image_units=args.image_units,
            lidc_mapping=args.lidc_mapping,
            target_spacing_mm=args.target_spacing_mm,
            precision=args.precision,
        )
    except (ModelLoadError, ValueError) as e:
        print(f"error: cannot load model: {e}", file=sys.stderr)
        return 2
    try:
        image, geometry, read_info = read_image(args.image)
    except (MedicalIOError, OSError, RuntimeError) as e:
        print(f"error: cannot read image: {e}", file=sys.stderr)
        return 2
    read_warnings = [read_info["warning"]] if read_info.get("warning") else []
    if (read_info.get("nonuniform_spacing") or read_info.get("unreadable_files")) and not args.allow_nonuniform:
        print(
            f"error: {args.image}: {read_info.get('warning')}; the outputs could be misplaced by up to the gap: "
            "refusing (repair the series, or pass --allow-nonuniform)",
            file=sys.stderr,
        )
        return 2
    for w in read_warnings:
        print(f"warning: {w}", file=sys.stderr)
    if image.ndim not in (2, 3):
        print(f"error: {args.image}: expected a 2D or 3D scalar image, got shape {image.shape}", file=sys.stderr)
        return 2
    print(
        f"predict: model {engine.name} ({engine.model.method}) on {engine.device_message}, "
        f"{engine.precision.describe()}; "
        f"image {image.shape}, intensity {engine.normalizer.describe(image)}, {engine.describe_resolution()}",
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    flag = "--roi" if args.roi else "--roi-point" if args.roi_point else None
    try:
        roi = _roi(args, image.ndim)
        if roi is not None:  # checked against the image before any work
            roi.resolve(image.shape if image.ndim == 3 else (1, *image.shape), geometry)
    except ValueError as e:
        text = str(e)
        print(f"error: {text if text.startswith(flag) else f'{flag}: {text}'}", file=sys.stderr)
        return 2
    if args.slice is not None and image.ndim == 3 and args.slice >= image.shape[0]:
        print(f"error: --slice {args.slice} is outside the image (slices 0 to {image.shape[0] - 1})", file=sys.stderr)
        return 2
    advice = [] if roi is not None else _input_advice(engine, image, geometry)
    for w in advice:  # before the (long) run, so the user can stop it and pass an ROI
        print(f"warning: {w}", file=sys.stderr)
    try:
        result = engine.predict_volume(
            image,
            geometry,
            samples=args.samples,
            personas=args.personas,
            uncertainty=not args.no_uncertainty,
            seed=args.seed,
            batch_slices=args.batch_slices,
            roi=roi,
            slice_index=args.slice,
            source=str(args.image),
            on_progress=_progress_printer(),
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for w in engine.warnings:
        print(f"warning: {w}", file=sys.stderr)
    ext = "." + args.format
    written: list[str] = []

    def put(folder, name, arr, label):
        if not label and not args.float_maps:  # probabilities in [0, 1] -> 8 bits (255 = 1.0): 4x smaller
            arr = np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
        written.append(write_image(folder / f"{name}{ext}", arr, geometry, label=label).name)

    def write_all(folder: Path) -> dict:
        if result.samples_region is not None:
            for i, s in enumerate(result.samples):
                put(folder, f"sample_{i:02d}", s, True)
        for rater, m in result.personas.items():
            put(folder, f"persona_{rater}", m, True)
        if result.mean_prob_region is not None:
            put(folder, "mean_prob", result.mean_prob, False)
        for kind, m in result.uncertainty.items():
            put(folder, f"uncertainty_{kind}", m, False)
        summary = {
            **result.info,
            "warnings": read_warnings + advice + list(result.info.get("warnings", [])),
            "image": str(args.image),
            "region": [[s.start, s.stop] for s in result.region],
            "scores": {k: [float(v) for v in vals] for k, vals in other_scores(result.scores).items()},
            "presence": presence_summary(result.scores, result.region[0].start if len(result.region) == 3 else None),
            "files": written,
            "seconds": round(time.perf_counter() - t0, 3),
            "map_encoding": "float32 in [0, 1]" if args.float_maps else "uint8: probability = value / 255",
            "precision": engine.precision.describe(),
        }
        atomic_write_text(folder / "prediction.json", json.dumps(summary, indent=2) + "\n")
        return summary

    try:  # a fresh folder renamed into place: no file of an earlier run is left beside these
        with staged_output_folder(out, replace=args.overwrite) as tmp:
            summary = write_all(tmp)
    except (MedicalIOError, OutputError, OSError) as e:
        print(f"error: cannot write outputs: {e}", file=sys.stderr)
        return 2
    print(f"predict: wrote {len(written)} files to {out} in {summary['seconds']:.1f} s", file=sys.stderr)
    return 0
