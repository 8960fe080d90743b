"""Training loop: one loop for every method, val each epoch, best-on-val checkpoint, exact resume.

Outputs in ``--out``: ``last.pt`` (resume point: model, optimizer, scheduler, step, RNG state),
``best.pt`` (best val score of the named metric; never test data), ``log.csv`` (train losses),
``val.csv`` (val metrics per epoch), ``config.json`` (resolved config) and TensorBoard events when
tensorboard is installed. Ctrl-C or SIGTERM saves ``last.pt`` at the current step; ``--resume``
continues from it with the same data order and random state.
"""

from __future__ import annotations

import csv
import json
import math
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_checkpoint_dict, save_checkpoint
from .config import resolve_config
from .data import SliceDataset, load_split, resolve_window
from .evaluate import check_select_metric, evaluate_items, higher_is_better, metric_value
from .model_card import build_model_card
from .models.registry import build_model
from .precision import autocast, prepare_input, prepare_model, resolve_precision
from .runtime import broadcast_flag, init_distributed, pick_device, seed_everything, shutdown_distributed


class _LossModule(torch.nn.Module):
    """Lets DistributedDataParallel see ``model.loss`` as the forward pass."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch, step):
        return self.model.loss(batch, step)


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
    tdist.all_gather_object(states, {k: [t.cpu() for t in v] if isinstance(v, list) else v.cpu() for k, v in state.items()})
    return states


def _set_rng_state(states: list, rank: int) -> None:
    if rank >= len(states):
        raise ValueError(f"last.pt holds random states for {len(states)} processes; resume with the same number")
    state = states[rank]
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def run_training(args) -> int:
    cfg = resolve_config(args)
    tcfg = cfg["train"]
    check_select_metric(tcfg["select_metric"])
    out = Path(args.out)
    device = pick_device(args.device)
    dist = init_distributed(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    seed_everything(tcfg["seed"] + dist.rank)
    out.mkdir(parents=True, exist_ok=True)
    main = dist.is_main

    train_ds = load_split(args.data, "train")
    val_ds = load_split(args.data, "val")
    if tcfg.get("intensity_window"):
        window, window_source = list(tcfg["intensity_window"]), "training config"
    else:
        window, window_source = resolve_window(train_ds)
    rank_raters = tcfg["rank_raters"]
    if rank_raters == "auto":
        rank_raters = bool(getattr(train_ds, "patient", None) is not None)  # LIDC: anonymous readers
    augment = tcfg["augment"] if tcfg["augment"].get("enabled", True) else None
    aug = {k: v for k, v in (augment or {}).items() if k != "enabled"}
    train_items = SliceDataset(train_ds, window, rank_raters=rank_raters, augment=aug, seed=tcfg["seed"])
    val_items = SliceDataset(val_ds, window, rank_raters=rank_raters, augment=None, seed=tcfg["seed"],
                             max_cases=tcfg.get("val_max_images"))
    if set(train_items.patients) & set(val_items.patients):
        raise ValueError("train and val share patients: refusing to train on a leaky split")

    rater_names = (
        [f"expert_{k + 1}" for k in range(len(train_items.rater_names))] if rank_raters else train_items.rater_names
    )
    mcfg = dict(cfg["model"])
    mcfg.update({"num_raters": len(rater_names), "rater_names": rater_names, "in_channels": 1})
    if mcfg.get("stage") == 2:
        if "dice_each_identity_mean" not in tcfg["select_metric"].split("+"):
            raise ValueError(f"D-Persona stage II selects on dice_each_identity_mean (alone or in a sum), not "
                             f"{tcfg['select_metric']!r}: a persona swap or collapse must not be selectable")
        model = _stage2_from_stage1(tcfg, mcfg)
    else:
        model = build_model(mcfg)
    model.to(device)
    precision = resolve_precision("fp32" if tcfg.get("amp") is False else tcfg.get("precision", "auto"), device)
    prepare_model(model, precision)
    net = _LossModule(model)
    if dist.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    optim = torch.optim.Adam(model.param_groups(tcfg["lr"], tcfg.get("z_lr")), weight_decay=tcfg.get("weight_decay", 0.0))
    if len(train_items) // dist.world < tcfg["batch_size"]:  # no full batch: the loop would never step
        raise ValueError(f"--batch-size {tcfg['batch_size']} is larger than the {len(train_items)} training slices "
                         f"of {args.data}" + (f" per process ({dist.world} processes)" if dist.world > 1 else ""))
    steps_per_epoch = max(1, len(train_items) // dist.world // tcfg["batch_size"])
    total_steps = tcfg["max_steps"] or steps_per_epoch * tcfg["epochs"]
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    scaler = torch.amp.GradScaler("cuda", enabled=precision.name == "fp16")
    if main:
        print(f"precision: {precision.describe()}")

    step, epoch, pos, best, wall_before = 0, 0, 0, None, 0.0
    select = tcfg["select_metric"]
    if args.resume and (out / "last.pt").exists():
        state = load_checkpoint_dict(out / "last.pt", map_location=device)
        model.load_state_dict(state["state_dict"])
        optim.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, epoch, pos = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
        best = state.get("best_metric")
        wall_before = float(state.get("wall_seconds", 0.0))
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        if main and state.get("precision", precision.name) != precision.name:
            print(f"note: last.pt was trained in {state['precision']}, continuing in {precision.name} "
                  "(an exact resume needs the same precision)", file=sys.stderr)
        _set_rng_state(state["rng"], dist.rank)
        if main:
            print(f"resumed from {out / 'last.pt'} at step {step} (epoch {epoch}, batch {pos})")
    elif args.resume and main:
        print(f"--resume: no {out / 'last.pt'} yet, starting from scratch")
    if main:
        from napari_multirater.io.atomic import atomic_write_text

        atomic_write_text(out / "config.json", json.dumps(cfg, indent=2) + "\n")
    writer = _tensorboard(out) if main else None

    stop = _StopFlag()
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    t_start = time.time()
    meta = {
        "window": window, "rank_raters": rank_raters, "train_items": train_items, "val_items": val_items,
        "device": device, "dist": dist, "total_steps": total_steps, "data": str(args.data),
        "rater_names": rater_names, "window_source": window_source, "precision": precision.describe(),
    }

    def save_last():
        rng = _gather_rng_states(dist)  # a collective: every rank takes part
        if not main:
            return
        card = build_model_card(cfg, meta, step, epoch, wall_before + time.time() - t_start, None)
        save_checkpoint(out / "last.pt", model, card, extra={
            "optimizer": optim.state_dict(), "scheduler": sched.state_dict(), "step": step, "epoch": epoch,
            "batch_in_epoch": pos, "best_metric": best, "rng": rng, "scaler": scaler.state_dict(), "precision": precision.name,
            "wall_seconds": wall_before + time.time() - t_start,
        })

    val_every = int(tcfg.get("val_every") or 0)

    def validate(best):
        """Score the model on val (rank 0), log a val.csv row, write best.pt when it improves."""
        if not main:
            return best
        metrics = evaluate_items(model, val_items, n_samples=tcfg["val_samples"], device=device,
                                 max_images=tcfg.get("val_max_images"), precision=precision)
        score = metric_value(metrics, select)
        improved = best is None or (score > best if higher_is_better(select) else score < best)
        row = {"step": step, "epoch": epoch, select: round(score, 6), "best": improved}
        row.update({k: round(v, 6) for k, v in metrics.items() if isinstance(v, float)})
        _append_csv(out / "val.csv", row)
        extra = ""
        if "experts_dice_match" in metrics:  # D-Persona stage II: the K expert outputs and the heads' state
            k = len(metrics.get("dice_each_identity", []))
            extra = (f" | experts: dice_match={metrics['experts_dice_match']:.4f} identity="
                     f"[{' '.join(f'{v:.3f}' for v in metrics['dice_each_identity'])}] |q|=["
                     + " ".join(f"{metrics.get(f'diag_q_norm_{i + 1}', float('nan')):.3g}" for i in range(k))
                     + "] entropy/logN=[" + " ".join(f"{metrics.get(f'diag_attn_entropy_{i + 1}', float('nan')):.2f}"
                                                   for i in range(k)) + "]")
        print(f"\nval epoch {epoch} step {step}: {select}={score:.4f}"
              f"{' (best)' if improved else ''} | ged={metrics['ged']:.4f} dice_match={metrics['dice_match']:.4f}{extra}")
        if improved:
            best = score
            card = build_model_card(cfg, meta, step, epoch, wall_before + time.time() - t_start, metrics)
            save_checkpoint(out / "best.pt", model, card)
        return best

    progress = _progress_bar(total_steps, step, main)
    interrupted = False
    try:
        while step < total_steps:
            batches = _batches(len(train_items), tcfg["batch_size"], epoch, tcfg["seed"], dist.rank, dist.world)
            model.train()
            t0, seen = time.time(), 0
            while pos < len(batches) and step < total_steps:
                batch = _to_device(_collate(train_items, batches[pos]), device)
                batch["image"] = prepare_input(batch["image"], precision)
                with autocast(precision, device):
                    losses = net(batch, step)
                loss = losses["loss"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss at step {step}: {_fmt(losses)}")
                optim.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optim)
                scaler.update()
                sched.step()
                step, pos, seen = step + 1, pos + 1, seen + len(batch["image"]) * dist.world
                rate = seen / max(time.time() - t0, 1e-6)
                if main:
                    progress.update(1, f"epoch {epoch} loss {loss.item():.4f} {rate:.1f} samples/s")
                    if step % tcfg["log_every"] == 0 or step == total_steps:
                        row = {"step": step, "epoch": epoch, "lr": sched.get_last_lr()[0], "samples_per_s": round(rate, 2)}
                        row.update({k: round(float(v.detach()) if torch.is_tensor(v) else float(v), 6) for k, v in losses.items()})
                        _append_csv(out / "log.csv", row)
                        if writer:
                            for k, v in row.items():
                                writer.add_scalar(f"train/{k}", v, step)
                val_now = bool(val_every) and step % val_every == 0 and pos < len(batches) and step < total_steps
                if val_now:  # mid-epoch validation; the resume point is saved right after it
                    best = validate(best)
                    model.train()
                if val_now or step % tcfg["save_every"] == 0:
                    save_last()
                if broadcast_flag(stop.raised, dist):
                    interrupted = True
                    break
            if interrupted:
                break
            # end of epoch (or of the step budget): validate, keep the best, save the resume point
            epoch, pos = epoch + 1, 0
            best = validate(best)
            save_last()
    except KeyboardInterrupt:  # a second Ctrl-C: the step may be half done, keep the last clean save
        if main:
            print(f"stopped immediately; {out / 'last.pt'} holds the last completed save. Continue with --resume.",
                  file=sys.stderr)
        shutdown_distributed(dist)
        return 130
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        progress.close()
        if writer:
            writer.close()
    if interrupted:
        save_last()
        if main:
            print(f"interrupted at step {step}; saved {out / 'last.pt'}. Continue with --resume.", file=sys.stderr)
        shutdown_distributed(dist)
        return 130
    if main:
        print(f"done: {step} steps, {epoch} epochs in {wall_before + time.time() - t_start:.0f} s; best {select}={best}")
        print(f"checkpoints: {out / 'best.pt'} (best on val), {out / 'last.pt'} (resume point)")
    shutdown_distributed(dist)
    return 0


def _stage2_from_stage1(tcfg: dict, mcfg: dict):
    """D-Persona stage II: the stage I checkpoint's architecture and weights, fresh expert heads."""
    from .models.dpersona import dpersona_stage2_from_stage1

    if not tcfg.get("stage1"):
        raise ValueError("D-Persona stage II needs --stage1 CKPT (a stage I best.pt)")
    stage1 = load_checkpoint_dict(tcfg["stage1"])
    if stage1["config"].get("method") != "dpersona":
        raise ValueError(f"{tcfg['stage1']} is a {stage1['config'].get('method')} checkpoint, not D-Persona stage I")
    if stage1["config"]["rater_names"] != mcfg["rater_names"]:
        raise ValueError(f"stage I raters {stage1['config']['rater_names']} differ from the data's {mcfg['rater_names']}")
    overrides = {k: mcfg[k] for k in ("heads", "rater_names", "num_raters") if k in mcfg}
    return dpersona_stage2_from_stage1(stage1["state_dict"], stage1["config"], overrides)


def _fmt(losses: dict) -> str:
    return ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items())


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: CSV logs only
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
