"""``multirater bench``: speed and memory benchmark of one model on this machine (not a test).

Everything is measured in one run, on one machine, with the thread count and machine facts recorded:

1. sampling latency of one 128x128 image for N = 1, 10, 100, 500 samples: ``model.sample``
   (backbone + prior once, all N decoded in one batched call) against :func:`~src_training.tools.naive_sampling.sample_naive`
   (the reference per-sample loop, same random draws) on the same model, interleaved run by run;
2. one latent-explorer re-decode, the per-persona output of all K raters, and through the inference
   engine a CT-like 64x512x512 volume slice by slice (whole slices, then a centred 32x128x128 ROI);
3. one training step (``Trainer.step``: forward + backward + Adam step) per method at batch 12 on 128x128, each with
   its compact default config from ``src_training/configs`` (D-Persona stage II too);
4. the process's peak resident memory after each section;
5. on CPU, ``engine.sample`` under a competing process (``--competitor-threads``, default 2): every
   fixed threads x precision choice against ``auto`` (the engine's own calibration under that load,
   with what it chose and why), interleaved (``--skip-contention`` skips it);
6. with ``--reference-dpersona PATH``, the D-Persona reference code's sampling side by side in this
   process (imported from the user's checkout, skipped with the reason where it cannot be).

The code lives in ``bench_common`` (settings, timing, model, machine), ``bench_inputs``,
``bench_sampling`` (1-2b), ``bench_training`` (3), ``bench_contention`` (5), ``bench_reference`` (6)
and ``bench_report`` (targets, markdown); this module is the driver and the command line.

Without ``--checkpoint`` a freshly built compact D-Persona stage I (random weights) is timed; the
output says so. Timings are medians with p10/p90 over ``--repeats`` runs after warm-up runs (CUDA is
synchronized around every timed call). ``--out DIR`` writes ``bench.json`` and ``bench.md``; the
markdown is also printed. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from .bench_common import (  # noqa: F401 - SCHEMA, Settings, resolve_devices: the bench's public names
    ANCHORS,
    SCHEMA,
    TARGETS,
    TRAIN_CONFIGS,
    Settings,
    _log,
    build_engine,
    machine_info,
    model_info,
    peak_rss_mb,
    resolve_devices,
)
from .bench_inputs import centred_box, ct_like_volume  # noqa: F401 - re-exported (tests, notebooks)
from .bench_report import _miss, evaluate_targets, to_markdown  # noqa: F401
from .bench_sampling import bench_interactive, bench_sampling, bench_volume
from .bench_training import bench_training


# ----------------------------------------------------------------------------- driver
def device_precisions(devices, precisions=("fp32", "auto")) -> list:
    """(device, Precision) pairs to time, side by side: each choice resolved, duplicates dropped."""
    from src_training.precision import resolve_precision

    pairs, seen = [], set()
    for dev in devices:
        for choice in precisions:
            prec = resolve_precision(choice, dev)
            if (dev.type, prec.name) not in seen:
                seen.add((dev.type, prec.name))
                pairs.append((dev, prec))
    return pairs


def benchmark(
    checkpoint: str | None = None,
    devices=None,
    settings: Settings | None = None,
    skip_train: bool = False,
    skip_3d: bool = False,
    method: str = "dpersona",
    argv=None,
    engine=None,
    precisions=("fp32", "auto"),
    contention: bool = True,
    competitor_threads: int = 2,
    reference: str | None = None,
) -> dict:
    """Run every section on every device; returns the JSON-able result (targets evaluated).
    ``engine``: an already built :func:`build_engine` for ``checkpoint`` / ``method`` (else built here).
    ``contention``: section 5 under a competing process of ``competitor_threads`` threads (CPU);
    ``reference``: path of a D-Persona reference checkout for the side-by-side section (CPU)."""
    import torch

    s = settings or Settings()
    devices = devices or resolve_devices(None)
    base = engine or build_engine(checkpoint, method, device="cpu")
    result = {
        "schema": SCHEMA,
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": argv,
        "settings": {**asdict(s), "devices": [d.type for d in devices]},
        "machine": machine_info(devices),
        "model": model_info(base, checkpoint),
        "anchors": ANCHORS,
        "target_limits": TARGETS,
        "devices": {},
        "memory": [],
        "skipped": [],
    }
    _log(
        f"model: {base.name} ({result['model']['source']}); torch threads {torch.get_num_threads()}; "
        f"devices {', '.join(d.type for d in devices)}{'; QUICK settings' if s.quick else ''}"
    )
    if skip_3d:
        result["skipped"].append("3D volume (--skip-3d)")
    if skip_train:
        result["skipped"].append("training (--skip-train)")
    if "cuda" not in [d.type for d in devices] and not torch.cuda.is_available():
        result["skipped"].append("cuda (not available on this machine)")
    volume = None if skip_3d else ct_like_volume(s.volume_shape)

    def mem(label, dev, run=None):
        cu = None
        if dev.type == "cuda":
            cu = torch.cuda.max_memory_allocated(dev) / 1024**2
            torch.cuda.reset_peak_memory_stats(dev)
        result["memory"].append(
            {
                "after": label if label.startswith("start") else f"{run or dev.type}: {label}",
                "peak_rss_mb": peak_rss_mb(),
                "cuda_peak_mb": cu,
                "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            }
        )

    from napari_multirater.inference.engine import InferenceEngine

    mem("start (model and test volume built)", torch.device("cpu"))
    for dev, prec in device_precisions(devices, precisions):
        key = f"{dev.type} {prec.name}"
        r = result["devices"][key] = {"device": dev.type, "precision": prec.describe()}
        _log(f"--- {key}: {prec.describe()}")
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        engine = InferenceEngine(base.model, base.card, device=dev, name=base.name, precision=prec.name)
        r["sampling"] = bench_sampling(engine, dev, s)
        mem("1 sampling", dev, key)
        r["interactive"] = bench_interactive(engine, dev, s)
        mem("2 interactive", dev, key)
        if volume is not None:
            r["volume"] = bench_volume(engine, dev, s, volume)
            mem("2b volume", dev, key)
        if not skip_train:
            r["training"] = bench_training(dev, s, prec)
            mem("3 training", dev, key)
        r["engine_device"], r["engine_warnings"] = engine.device_message, list(engine.warnings)
        if dev.type == "cuda":
            base.model.to("cpu")
            torch.cuda.empty_cache()
    cpu = torch.device("cpu")
    base.model.to(cpu)
    if reference:
        from .bench_reference import bench_reference

        result["reference"] = bench_reference(base, reference, s, precisions)
        mem("side by side with the reference code", cpu, "cpu")
    else:
        result["reference"] = {"skipped": "no --reference-dpersona PATH given"}
    if contention:
        from .bench_contention import bench_contention

        result["contention"] = bench_contention(base, s, competitor_threads)
        mem("5 contention", cpu, "cpu")
    else:
        result["skipped"].append("contention (--skip-contention)")
    base.model.to(memory_format=torch.contiguous_format)
    result["machine"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["targets"] = evaluate_targets(result)
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    from napari_multirater.argtypes import POSITIVE_INT, int_at_least

    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="CKPT_OR_NAME",
        help="trained model to time (file or bundled/cached name); default: a freshly built compact "
        "D-Persona stage I with random weights",
    )
    p.add_argument("--out", default=None, help="folder for bench.json and bench.md (created); default: print only")
    p.add_argument("--overwrite", action="store_true", help="replace bench.json / bench.md in --out")
    p.add_argument(
        "--device", default=None, choices=("cpu", "cuda", "all"), help="default: cpu, and cuda too when available"
    )
    p.add_argument(
        "--repeats", type=POSITIVE_INT, default=None, help="timed runs per measurement (default 20; --quick 3)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small settings for smoke tests (64x64 image, N<=100, tiny volume, batch 2)",
    )
    p.add_argument("--skip-train", action="store_true", help="skip the training-step section")
    p.add_argument("--skip-3d", action="store_true", help="skip the 3D volume runs")
    p.add_argument(
        "--threads", type=POSITIVE_INT, default=None, help="torch.set_num_threads (default: torch's default)"
    )
    p.add_argument(
        "--method",
        default="dpersona",
        help="method of the fresh model when no --checkpoint "
        "(a config name in src_training/configs; dpersona = stage I)",
    )
    p.add_argument("--image-size", type=int_at_least(16), default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--volume-samples", type=POSITIVE_INT, default=None, help="samples per slice in the volume runs (default 8)"
    )
    p.add_argument(
        "--precision",
        default="fp32,auto",
        help="comma-separated precisions timed side by side: auto, fp32, bf16 (default fp32,auto; "
        "auto = bf16 + channels_last where the CPU/GPU computes bf16 natively)",
    )
    p.add_argument(
        "--reference-dpersona",
        default=None,
        metavar="PATH",
        help="a checkout of the D-Persona reference code (github.com/ycwu1997/D-Persona, with its "
        "dependencies installed): its sampling is timed side by side in this process",
    )
    p.add_argument("--skip-contention", action="store_true", help="skip section 5 (under a competing process)")
    p.add_argument(
        "--competitor-threads",
        type=POSITIVE_INT,
        default=2,
        help="threads of the competing process in section 5 (default 2)",
    )
    p.add_argument(
        "--train-configs", default=None, help=f"comma-separated configs to time (default: {','.join(TRAIN_CONFIGS)})"
    )


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark sampling, interactive ops, volumes and training on this machine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    try:
        devices = resolve_devices(args.device)
    except ValueError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    s = Settings.from_args(args)
    precisions = tuple(c.strip().lower() for c in str(args.precision).split(",") if c.strip())
    bad = [c for c in precisions if c not in ("auto", "fp32", "bf16")]
    if bad or not precisions:
        print(f"bench: --precision takes auto, fp32, bf16 (comma-separated), got {args.precision!r}", file=sys.stderr)
        return 2
    from napari_multirater.inference.engine import ModelLoadError
    from napari_multirater.io.outputs import OutputError, check_output_files

    if args.out:  # before any work: never replaces the checkpoint or, without --overwrite, a result
        try:
            files = [Path(args.out) / "bench.json", Path(args.out) / "bench.md"]
            check_output_files(files, [args.checkpoint], overwrite=getattr(args, "overwrite", False))
        except OutputError as e:
            print(f"bench: {e}", file=sys.stderr)
            return 2
    try:
        base = build_engine(args.checkpoint, args.method, device="cpu")
    except (ModelLoadError, ValueError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(int(args.threads))
    try:
        result = benchmark(
            args.checkpoint,
            devices,
            s,
            args.skip_train,
            args.skip_3d,
            args.method,
            argv=getattr(args, "argv", None) or sys.argv[1:],
            engine=base,
            precisions=precisions,
            contention=not args.skip_contention,
            competitor_threads=args.competitor_threads,
            reference=args.reference_dpersona,
        )
    finally:
        torch.set_num_threads(threads)  # the Python entry point leaves the process as it found it
    md = to_markdown(result)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        from napari_multirater.io.atomic import atomic_write_text

        atomic_write_text(out / "bench.json", json.dumps(result, indent=2) + "\n")
        atomic_write_text(out / "bench.md", md)
        _log(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    print(md)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="multirater bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(p)
    args = p.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
