"""Training loop: one loop for every method, val each epoch, best-on-val checkpoint, exact resume.

Outputs in ``--out``: ``last.pt`` (resume point: model, optimizer, scheduler, step, RNG state),
``best.pt`` (best val score of the named metric; never test data), ``log.csv`` (train losses),
``val.csv`` (val metrics per epoch), ``config.json`` (resolved config) and TensorBoard events when
tensorboard is installed. Ctrl-C or SIGTERM saves ``last.pt`` at the current step; ``--resume``
continues from it with the same data order and random state.

:class:`TrainRequest` (what to train) -> :class:`TrainingRun` (data, model, loop, validation,
checkpoints) -> :class:`~src_training.trainer.Trainer` (one optimisation step).
"""

from __future__ import annotations

import csv
import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_checkpoint_dict, save_checkpoint
from .config import resolve_config
from .data import SliceDataset, load_split, resolve_window
from .evaluate import check_select_metric, evaluate_items, higher_is_better, metric_value
from .model_card import build_model_card
from .models.registry import build_model
from .precision import prepare_model, resolve_precision
from .runtime import broadcast_flag, init_distributed, pick_device, seed_everything, shutdown_distributed
from .trainer import Trainer


class _StopFlag:
    def __init__(self):
        self.raised = False
        self.signal = None

    def __call__(self, signum, frame):
        if self.raised:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.raised = True
        self.signal = signum
        print(f"\nsignal {signum}: saving last.pt at the end of this step ...", file=sys.stderr, flush=True)


def _batches(n_items: int, batch_size: int, epoch: int, seed: int, rank: int, world: int):
    """Deterministic per-epoch batches (same order after a resume); each rank takes a strided share."""
    order = np.random.default_rng([seed, epoch]).permutation(n_items)
    order = order[: world * (n_items // world)][rank::world]  # every rank gets the same number of items
    n_batches = len(order) // batch_size  # drop the last incomplete batch (BatchNorm-safe)
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(n_batches)]


def _collate(items: SliceDataset, idx) -> dict:
    samples = [items[int(i)] for i in idx]
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _append_csv(path: Path, row: dict) -> None:
    """Append one row; the whole file is rewritten through the verified atomic writer, so a full
    disk never leaves a half-written log."""
    import io

    from napari_multirater.io.atomic import atomic_write_text

    old = path.read_text(encoding="utf-8") if path.exists() else ""
    f = io.StringIO(newline="")
    w = csv.DictWriter(f, fieldnames=list(row))
    if not old:
        w.writeheader()
    w.writerow(row)
    atomic_write_text(path, old + f.getvalue())


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _gather_rng_states(dist) -> list:
    """Every rank's random state (rank 0 stores them all so a resume restores each rank's own)."""
    state = _rng_state()
    if not dist.enabled:
        return [state]
    import torch.distributed as tdist

    states = [None] * dist.world
    tdist.all_gather_object(
        states, {k: [t.cpu() for t in v] if isinstance(v, list) else v.cpu() for k, v in state.items()}
    )
    return states


def _set_rng_state(states: list, rank: int) -> None:
    if rank >= len(states):
        raise ValueError(f"last.pt holds random states for {len(states)} processes; resume with the same number")
    state = states[rank]
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass(frozen=True)
class TrainRequest:
    """One training run: the resolved config (:func:`~src_training.config.resolve_config`), the data,
    the output folder, the device choice and whether to continue from ``out/last.pt``."""

    config: dict
    data: str
    out: Path
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False
    inputs: tuple = ()  # files the run reads (data, --config, --stage1): never replaced by an output

    @classmethod
    def from_args(cls, args) -> TrainRequest:
        """From the ``multirater train`` arguments (the config merges shipped, --config and flags)."""
        return cls(
            config=resolve_config(args),
            data=str(args.data),
            out=Path(args.out),
            device=args.device or "auto",
            resume=bool(args.resume),
            overwrite=bool(getattr(args, "overwrite", False)),
            inputs=tuple(
                str(p) for p in (args.data, getattr(args, "config", None), getattr(args, "stage1", None)) if p
            ),
        )


class TrainingRun:
    """The training loop of one :class:`TrainRequest`: data, model and :class:`Trainer` set up in the
    constructor; :meth:`run` trains with validation, best/last checkpoints, logs and exact resume."""

    def __init__(self, request: TrainRequest):
        self.request = request
        self.cfg = request.config
        self.tcfg = tcfg = self.cfg["train"]
        check_select_metric(tcfg["select_metric"])
        self.out = out = Path(request.out)
        earlier = check_run_folder(request)
        device = pick_device(request.device)
        self.dist = dist = init_distributed(device)
        if dist.enabled and device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
        self.device = device
        seed_everything(tcfg["seed"] + dist.rank)
        out.mkdir(parents=True, exist_ok=True)
        self.main = dist.is_main
        if earlier and self.main:  # --overwrite: start clean, no log row or best.pt of the earlier run stays
            remove_run_files(out)

        train_ds = load_split(request.data, "train")
        val_ds = load_split(request.data, "val")
        if tcfg.get("intensity_window"):
            window, window_source = list(tcfg["intensity_window"]), "training config"
        else:
            window, window_source = resolve_window(train_ds)
        rank_raters = tcfg["rank_raters"]
        if rank_raters == "auto":
            rank_raters = bool(getattr(train_ds, "patient", None) is not None)  # LIDC: anonymous readers
        augment = tcfg["augment"] if tcfg["augment"].get("enabled", True) else None
        aug = {k: v for k, v in (augment or {}).items() if k != "enabled"}
        self.train_items = SliceDataset(train_ds, window, rank_raters=rank_raters, augment=aug, seed=tcfg["seed"])
        self.val_items = SliceDataset(
            val_ds,
            window,
            rank_raters=rank_raters,
            augment=None,
            seed=tcfg["seed"],
            max_cases=tcfg.get("val_max_images"),
        )
        if set(self.train_items.patients) & set(self.val_items.patients):
            raise ValueError("train and val share patients: refusing to train on a leaky split")

        rater_names = (
            [f"expert_{k + 1}" for k in range(len(self.train_items.rater_names))]
            if rank_raters
            else self.train_items.rater_names
        )
        mcfg = dict(self.cfg["model"])
        mcfg.update({"num_raters": len(rater_names), "rater_names": rater_names, "in_channels": 1})
        if mcfg.get("stage") == 2:
            if "dice_each_identity_mean" not in tcfg["select_metric"].split("+"):
                raise ValueError(
                    f"D-Persona stage II selects on dice_each_identity_mean (alone or in a sum), not "
                    f"{tcfg['select_metric']!r}: a persona swap or collapse must not be selectable"
                )
            model = _stage2_from_stage1(tcfg, mcfg)
        else:
            model = build_model(mcfg)
        self.model = model.to(device)
        self.precision = resolve_precision(
            "fp32" if tcfg.get("amp") is False else tcfg.get("precision", "auto"), device
        )
        prepare_model(model, self.precision)
        n_train = len(self.train_items)
        if n_train // dist.world < tcfg["batch_size"]:  # no full batch: the loop would never step
            raise ValueError(
                f"--batch-size {tcfg['batch_size']} is larger than the {n_train} training slices "
                f"of {request.data}" + (f" per process ({dist.world} processes)" if dist.world > 1 else "")
            )
        steps_per_epoch = max(1, n_train // dist.world // tcfg["batch_size"])
        self.total_steps = tcfg["max_steps"] or steps_per_epoch * tcfg["epochs"]
        self.trainer = Trainer(
            model,
            lr=tcfg["lr"],
            z_lr=tcfg.get("z_lr"),
            weight_decay=tcfg.get("weight_decay", 0.0),
            total_steps=self.total_steps,
            device=device,
            precision=self.precision,
            dist=dist,
        )
        if self.main:
            print(f"precision: {self.precision.describe()}")
        self.epoch, self.pos, self.best, self.wall_before = 0, 0, None, 0.0
        self.select = tcfg["select_metric"]
        self.meta = {
            "window": window,
            "rank_raters": rank_raters,
            "train_items": self.train_items,
            "val_items": self.val_items,
            "device": device,
            "dist": dist,
            "total_steps": self.total_steps,
            "data": str(request.data),
            "rater_names": rater_names,
            "window_source": window_source,
            "precision": self.precision.describe(),
        }
        self.t_start = time.time()

    @property
    def step(self) -> int:
        return self.trainer.steps_done

    def _wall(self) -> float:
        return self.wall_before + time.time() - self.t_start

    def resume(self) -> None:
        """Continue from ``out/last.pt`` when asked and present: weights, optimizer, schedule, position,
        best score and every rank's random state."""
        last, main = self.out / "last.pt", self.main
        if not (self.request.resume and last.exists()):
            if self.request.resume and main:
                print(f"--resume: no {last} yet, starting from scratch")
            return
        state = load_checkpoint_dict(last, map_location=self.device)
        self.model.load_state_dict(state["state_dict"])
        self.trainer.load_state_dict(state)
        self.epoch, self.pos = int(state["epoch"]), int(state["batch_in_epoch"])
        self.best = state.get("best_metric")
        self.wall_before = float(state.get("wall_seconds", 0.0))
        if main and state.get("precision", self.precision.name) != self.precision.name:
            print(
                f"note: last.pt was trained in {state['precision']}, continuing in {self.precision.name} "
                "(an exact resume needs the same precision)",
                file=sys.stderr,
            )
        _set_rng_state(state["rng"], self.dist.rank)
        if main:
            print(f"resumed from {last} at step {self.step} (epoch {self.epoch}, batch {self.pos})")

    def save_last(self) -> None:
        rng = _gather_rng_states(self.dist)  # a collective: every rank takes part
        if not self.main:
            return
        card = build_model_card(self.cfg, self.meta, self.step, self.epoch, self._wall(), None)
        save_checkpoint(
            self.out / "last.pt",
            self.model,
            card,
            extra={
                **self.trainer.state_dict(),
                "epoch": self.epoch,
                "batch_in_epoch": self.pos,
                "best_metric": self.best,
                "rng": rng,
                "wall_seconds": self._wall(),
            },
        )

    def validate(self) -> None:
        """Score the model on val (rank 0), log a val.csv row, write best.pt when it improves."""
        if not self.main:
            return
        tcfg, select, step, epoch = self.tcfg, self.select, self.step, self.epoch
        metrics = evaluate_items(
            self.model,
            self.val_items,
            n_samples=tcfg["val_samples"],
            device=self.device,
            max_images=tcfg.get("val_max_images"),
            precision=self.precision,
        )
        score = metric_value(metrics, select)
        improved = self.best is None or (score > self.best if higher_is_better(select) else score < self.best)
        row = {"step": step, "epoch": epoch, select: round(score, 6), "best": improved}
        row.update({k: round(v, 6) for k, v in metrics.items() if isinstance(v, float)})
        _append_csv(self.out / "val.csv", row)
        print(
            f"\nval epoch {epoch} step {step}: {select}={score:.4f}"
            f"{' (best)' if improved else ''} | ged={metrics['ged']:.4f} dice_match={metrics['dice_match']:.4f}"
            f"{_experts_summary(metrics)}"
        )
        if improved:
            self.best = score
            card = build_model_card(self.cfg, self.meta, step, epoch, self._wall(), metrics)
            save_checkpoint(self.out / "best.pt", self.model, card)

    def _log_train(self, losses: dict, rate: float, writer) -> None:
        row = {
            "step": self.step,
            "epoch": self.epoch,
            "lr": self.trainer.sched.get_last_lr()[0],
            "samples_per_s": round(rate, 2),
        }
        row.update({k: round(float(v.detach()) if torch.is_tensor(v) else float(v), 6) for k, v in losses.items()})
        _append_csv(self.out / "log.csv", row)
        if writer:
            for k, v in row.items():
                writer.add_scalar(f"train/{k}", v, self.step)

    def _epoch(self, stop, progress, writer) -> bool:
        """Train from the current position to the end of the epoch (or the step budget); True when
        a signal asked to stop."""
        tcfg, dist, total = self.tcfg, self.dist, self.total_steps
        batches = _batches(len(self.train_items), tcfg["batch_size"], self.epoch, tcfg["seed"], dist.rank, dist.world)
        val_every = int(tcfg.get("val_every") or 0)
        self.model.train()
        t0, seen = time.time(), 0
        while self.pos < len(batches) and self.step < total:
            batch = _to_device(_collate(self.train_items, batches[self.pos]), self.device)
            losses = self.trainer.step(batch)
            self.pos, seen = self.pos + 1, seen + len(batch["image"]) * dist.world
            step, rate = self.step, seen / max(time.time() - t0, 1e-6)
            if self.main:
                progress.update(1, f"epoch {self.epoch} loss {losses['loss'].item():.4f} {rate:.1f} samples/s")
                if step % tcfg["log_every"] == 0 or step == total:
                    self._log_train(losses, rate, writer)
            val_now = bool(val_every) and step % val_every == 0 and self.pos < len(batches) and step < total
            if val_now:  # mid-epoch validation; the resume point is saved right after it
                self.validate()
                self.model.train()
            if val_now or step % tcfg["save_every"] == 0:
                self.save_last()
            if broadcast_flag(stop.raised, dist):
                return True
        return False

    def run(self) -> int:
        """Train to the step budget; 0 when done, 130 when interrupted (``last.pt`` saved)."""
        out, main, dist = self.out, self.main, self.dist
        self.resume()
        if main:
            from napari_multirater.io.atomic import atomic_write_text

            atomic_write_text(out / "config.json", json.dumps(self.cfg, indent=2) + "\n")
        writer = _tensorboard(out) if main else None
        stop = _StopFlag()
        old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        self.t_start = time.time()
        progress = _progress_bar(self.total_steps, self.step, main)
        interrupted = False
        try:
            while self.step < self.total_steps:
                if self._epoch(stop, progress, writer):
                    interrupted = True
                    break
                # end of epoch (or of the step budget): validate, keep the best, save the resume point
                self.epoch, self.pos = self.epoch + 1, 0
                self.validate()
                self.save_last()
        except KeyboardInterrupt:  # a second Ctrl-C: the step may be half done, keep the last clean save
            if main:
                print(
                    f"stopped immediately; {out / 'last.pt'} holds the last completed save. Continue with --resume.",
                    file=sys.stderr,
                )
            shutdown_distributed(dist)
            return 130
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            progress.close()
            if writer:
                writer.close()
        if interrupted:
            self.save_last()
            if main:
                print(
                    f"interrupted at step {self.step}; saved {out / 'last.pt'}. Continue with --resume.",
                    file=sys.stderr,
                )
            shutdown_distributed(dist)
            return 130
        if main:
            print(
                f"done: {self.step} steps, {self.epoch} epochs in {self._wall():.0f} s; best {self.select}={self.best}"
            )
            print(f"checkpoints: {out / 'best.pt'} (best on val), {out / 'last.pt'} (resume point)")
        shutdown_distributed(dist)
        return 0


RUN_FILES = ("last.pt", "best.pt", "log.csv", "val.csv", "config.json")


def check_run_folder(request: TrainRequest) -> bool:
    """Apply the output rule to ``request.out`` before anything is written: no run file replaces an
    input, and an earlier run there is continued (``resume`` with its ``last.pt``) or replaced
    (``overwrite``), never silently. True when an earlier run is to be replaced."""
    from napari_multirater.io.outputs import check_output_files

    files = [Path(request.out) / name for name in RUN_FILES]
    # an input is never replaced, even with --overwrite
    check_output_files(files, request.inputs, overwrite=True, own_folder=request.out)
    if request.resume and (Path(request.out) / "last.pt").is_file():
        return False
    earlier = [f for f in files if f.exists()]
    if earlier and not request.overwrite:
        hint = "" if request.resume else "--resume to continue it, "
        raise ValueError(
            f"--out {request.out} holds an earlier run ({', '.join(f.name for f in earlier)}"
            f"{'' if not request.resume else ', no last.pt to resume from'}): pass {hint}--overwrite to "
            "replace it, or choose a new folder"
        )
    return bool(earlier)


def remove_run_files(out: Path) -> None:
    """Delete an earlier run's checkpoints, logs and TensorBoard events in ``out`` (``--overwrite``)."""
    import shutil

    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    tb = out / "tb"
    if tb.is_dir() and not tb.is_symlink():
        shutil.rmtree(tb)


def run_training(args) -> int:
    """``multirater train``: one :class:`TrainingRun` of the command line's request."""
    return TrainingRun(TrainRequest.from_args(args)).run()


def _experts_summary(metrics: dict) -> str:
    """D-Persona stage II: the K expert outputs and the heads' state, for the val line ('' otherwise)."""
    if "experts_dice_match" not in metrics:
        return ""
    k = len(metrics.get("dice_each_identity", []))
    entropy = ""
    if "diag_attn_entropy_1" in metrics:  # attention codes only (not heads.code "bounded")
        entropy = " entropy/logN=[" + " ".join(f"{metrics[f'diag_attn_entropy_{i + 1}']:.2f}" for i in range(k)) + "]"
    return (
        f" | experts: dice_match={metrics['experts_dice_match']:.4f} identity="
        f"[{' '.join(f'{v:.3f}' for v in metrics['dice_each_identity'])}] |q|=["
        + " ".join(f"{metrics.get(f'diag_q_norm_{i + 1}', float('nan')):.3g}" for i in range(k))
        + "]"
        + entropy
    )


def _stage2_from_stage1(tcfg: dict, mcfg: dict):
    """D-Persona stage II: the stage I checkpoint's architecture and weights, fresh expert heads."""
    from .models.dpersona import dpersona_stage2_from_stage1

    if not tcfg.get("stage1"):
        raise ValueError("D-Persona stage II needs --stage1 CKPT (a stage I best.pt)")
    stage1 = load_checkpoint_dict(tcfg["stage1"])
    if stage1["config"].get("method") != "dpersona":
        raise ValueError(f"{tcfg['stage1']} is a {stage1['config'].get('method')} checkpoint, not D-Persona stage I")
    if stage1["config"]["rater_names"] != mcfg["rater_names"]:
        raise ValueError(
            f"stage I raters {stage1['config']['rater_names']} differ from the data's {mcfg['rater_names']}"
        )
    overrides = {k: mcfg[k] for k in ("heads", "rater_names", "num_raters") if k in mcfg}
    drawn = (mcfg.get("loss") or {}).get("shape_only_where_drawn")
    if drawn is not None:  # the one stage-II loss option; every other loss key is stage I's
        overrides["loss"] = {"shape_only_where_drawn": bool(drawn)}
    return dpersona_stage2_from_stage1(stage1["state_dict"], stage1["config"], overrides)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard missing or broken: CSV logs only
        return None
    return SummaryWriter(str(out / "tb"))


class _progress_bar:
    """tqdm on a terminal, a line every 5% otherwise (CI logs stay readable)."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.total, self.n, self.enabled = total, initial, enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
            except ImportError:
                self.bar = None
        self.every = max(1, total // 20)

    def update(self, k: int, text: str) -> None:
        self.n += k
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(k)
            self.bar.set_postfix_str(text)
        elif self.n % self.every == 0 or self.n == self.total:
            print(f"step {self.n}/{self.total} {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
