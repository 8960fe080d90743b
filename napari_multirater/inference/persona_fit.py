"""Learn one new persona (a new rater's style) from that rater's masks in an annotation project.

Everything the model already knows stays frozen: only the per-rater tensors the model names in
:meth:`~src_training.models.base.MultiRaterModel.persona_tensors` grow by one block (D-Persona: a
new projection head / query over the prior bank; ProSeg: a new Dirichlet concentration and
classifier row plus the new persona's own boundary-latent statistic head; Pionono: a new rater
Gaussian). The new blocks start as a copy of the existing persona closest to the rater on the
fitting cases and are fitted with the model's own loss on that rater's masks, on a one-persona
view of the model (so the cost does not grow with the number of personas); every other weight,
and every existing persona, is checked to be bit-identical afterwards. A method without personas is refused with
:class:`NoPersonas`, and :func:`nearest_persona_report` says how close its outputs are instead.

Honest score: 20% of the rater's cases (at least 3) are held out *before* anything is fitted;
the identity Dice of the new persona against the rater on them is reported next to every existing
persona's Dice on the same cases. :func:`iter_add_persona` is a progress generator (yields
:class:`~napari_multirater.progress.Progress` with the loss, closing it cancels, nothing is
written); it writes a NEW checkpoint (the original is never modified) whose model card names the
rater, the cases and their checksums, the steps and the held-out scores.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from src_training.checkpoint import load_checkpoint, save_checkpoint
from src_training.models.registry import build_model

from ..progress import Progress, run_to_completion

__all__ = [
    "NoPersonas",
    "PersonaFitError",
    "RaterCase",
    "add_persona",
    "held_out_split",
    "iter_add_persona",
    "iter_fit_persona",
    "load_rater_cases",
    "nearest_persona_report",
    "persona_dice",
]

HOLD_OUT_FRACTION = 0.2
MIN_HELD_OUT = 3
MIN_FIT = 3
DEFAULT_STEPS = 150
DEFAULT_BATCH = 8


class PersonaFitError(ValueError):
    """The persona cannot be learned from this input (the message says why, in one line)."""


class NoPersonas(PersonaFitError):
    """The model's method has no personas to add to (capabilities say so)."""


@dataclass
class RaterCase:
    """One case the rater annotated: image (raw units), geometry, the rater's binary mask."""

    case_id: str
    image: np.ndarray
    geometry: object
    mask: np.ndarray
    image_sha256: str
    mask_sha256: str


@dataclass
class _Fitted:
    model: object
    losses: list = field(default_factory=list)
    source: str = ""
    steps: int = 0
    lr: float = 0.0


# ----------------------------------------------------------------------------- data
def load_rater_cases(store, rater: str) -> list[RaterCase]:
    """Every case of ``store`` (an :class:`~napari_multirater.annotation.AnnotationStore`) that
    ``rater`` saved a mask for (only the first mask, never a repeat)."""
    from ..datasets.case_folder import image_checksum

    out = []
    for cid in store.case_ids():
        if not store.has_mask(cid, rater):
            continue
        image, geometry, info = store.load_image(cid)
        mask, _ = store.load_mask(cid, rater)
        if mask is None:
            continue
        out.append(RaterCase(cid, image, geometry, mask.astype(np.uint8), info["image_sha256"], image_checksum(mask)))
    return out


def held_out_split(
    case_ids, fraction: float = HOLD_OUT_FRACTION, min_held: int = MIN_HELD_OUT, min_fit: int = MIN_FIT, seed: int = 0
) -> tuple[list[str], list[str]]:
    """``(fit ids, held-out ids)``: ``fraction`` (at least ``min_held``) held out, chosen by a seeded
    shuffle of the sorted ids (the same cases give the same split)."""
    ids = sorted(case_ids)
    n_held = max(int(min_held), math.ceil(float(fraction) * len(ids)))
    if len(ids) < n_held + int(min_fit):
        raise PersonaFitError(
            f"need at least {n_held + int(min_fit)} annotated cases ({n_held} held out to score "
            f"the persona honestly + {int(min_fit)} to fit it), this rater has {len(ids)}"
        )
    order = np.random.default_rng(int(seed)).permutation(len(ids))
    held = sorted(ids[i] for i in order[:n_held])
    return [c for c in ids if c not in held], held


def _slices(case: RaterCase) -> list[int] | None:
    """2D: None (the image itself). 3D: slices where the mask is drawn plus one on each side."""
    if case.image.ndim == 2:
        return None
    drawn = np.flatnonzero(case.mask.reshape(case.mask.shape[0], -1).any(1))
    if drawn.size == 0:
        return [case.image.shape[0] // 2]
    keep = set()
    for z in drawn:
        keep.update((int(z) - 1, int(z), int(z) + 1))
    return sorted(z for z in keep if 0 <= z < case.image.shape[0])


def _prepare(engine, cases: list[RaterCase]) -> dict:
    """Model-ready tensors grouped by shape: ``{(H, W): (x (N, 1, H, W), y (N, 1, H, W), valid (N, 1, H, W))}``,
    normalised, resampled and padded exactly as inference prepares images."""
    dev = torch.device("cpu")
    groups: dict = {}
    for c in cases:
        zs = _slices(c)
        imgs = c.image[None] if zs is None else c.image[zs]
        masks = c.mask[None] if zs is None else c.mask[zs]
        size = engine._model_size(imgs.shape[-2:], c.geometry, None)
        x, pad = engine._prepare(np.asarray(imgs), dev, size)
        y = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))[:, None]
        if size is not None and tuple(size) != tuple(y.shape[-2:]):
            y = F.interpolate(y, size=tuple(size), mode="nearest-exact")
        inside = torch.ones_like(y)
        y = F.pad(y, (pad[2], pad[3], pad[0], pad[1]))
        inside = F.pad(inside, (pad[2], pad[3], pad[0], pad[1]))
        key = tuple(x.shape[-2:])
        xs, ys, vs = groups.setdefault(key, ([], [], []))
        xs.append(x.float())
        ys.append(y)
        vs.append(inside)
    return {k: tuple(torch.cat(t) for t in v) for k, v in groups.items()}


# ----------------------------------------------------------------------------- scores
def _dice_t(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Dice per image of binary (N, H, W) tensors (1 when both empty)."""
    inter = (pred * y).flatten(1).sum(1)
    s = pred.flatten(1).sum(1) + y.flatten(1).sum(1)
    return torch.where(s > 0, 2 * inter / s.clamp(min=1e-9), torch.ones_like(s))


@torch.no_grad()
def _persona_dice_tensors(model, data: dict) -> np.ndarray:
    """Mean Dice (over slices) of every persona against the masks in prepared ``data`` -> (K,)."""
    total, n = None, 0
    for x, y, inside in data.values():
        for s in range(0, len(x), DEFAULT_BATCH):
            logits = model.personalize(x[s : s + DEFAULT_BATCH], torch.Generator().manual_seed(0))
            pred = (logits > 0).float() * inside[s : s + DEFAULT_BATCH]
            yy = y[s : s + DEFAULT_BATCH, 0]
            d = torch.stack([_dice_t(pred[:, k], yy) for k in range(pred.shape[1])], 1).sum(0)
            total = d if total is None else total + d
            n += len(yy)
    return (total / max(n, 1)).numpy()


def persona_dice(engine, cases: list[RaterCase], seed: int = 0) -> dict[str, float]:
    """Identity Dice of every persona of ``engine`` against the rater: per case on the whole image /
    volume (both empty = 1), mean over ``cases``. Uses the normal inference path."""
    from ..analysis.overlap import dice

    scores: dict[str, list[float]] = {name: [] for name in engine.rater_names}
    for c in cases:
        res = engine.predict_volume(c.image, c.geometry, samples=0, personas=True, seed=seed)
        for name, mask in res.personas.items():
            scores[name].append(dice(mask, c.mask))
    return {k: float(np.mean(v)) if v else float("nan") for k, v in scores.items()}


def nearest_persona_report(engine, cases: list[RaterCase]) -> dict:
    """How close each existing persona is to the rater (any model, with or without personas):
    ``{"dice": {persona: mean Dice}, "nearest": name, "n_cases": n, "text": one line}``."""
    d = persona_dice(engine, cases)
    nearest = max(d, key=lambda k: (d[k], k)) if d else None
    personalized = engine.capabilities.personalized
    what = "persona" if personalized else "output (the same for every rater: the model has no personas)"
    text = (
        f"closest {what}: {nearest} (Dice {d[nearest]:.3f} on {len(cases)} of your cases)"
        if nearest
        else "no cases to compare"
    )
    return {"dice": d, "nearest": nearest, "n_cases": len(cases), "text": text}


# ----------------------------------------------------------------------------- growing + fitting
def unique_persona_name(names, rater: str) -> str:
    if rater not in names:
        return rater
    n = 2
    while f"{rater}_{n}" in names:
        n += 1
    return f"{rater}_{n}"


def grow_model(model, name: str, source: int):
    """A copy of ``model`` with one more persona ``name`` whose per-rater blocks are copies of
    persona ``source``'s; returns ``(grown, {key: fitted})``."""
    per = model.persona_tensors()
    if not per:
        raise NoPersonas(f"{model.method} has no personas to add to")
    k = model.num_raters
    grown = build_model(model.config_with_persona(name))
    target = grown.state_dict()
    state = {}
    for key, t in model.state_dict().items():
        if key in per:
            if t.shape[0] % k:
                raise PersonaFitError(f"{key}: {t.shape[0]} rows are not {k} per-rater blocks")
            b = t.shape[0] // k
            t = torch.cat([t, t[source * b : (source + 1) * b]], 0)
        if key not in target or tuple(target[key].shape) != tuple(t.shape):
            raise PersonaFitError(f"{key}: cannot grow to {k + 1} personas (shape {tuple(t.shape)})")
        state[key] = t.clone()
    grown.load_state_dict(state, strict=True)
    grown.eval()
    return grown, per


def solo_model(grown, per: dict):
    """A one-persona model holding only ``grown``'s last persona (shared weights identical): the fit
    runs on it, so the cost does not grow with the number of existing personas."""
    cfg = copy.deepcopy(grown.config)
    cfg["num_raters"], cfg["rater_names"] = 1, [grown.rater_names[-1]]
    solo = build_model(cfg)
    k = grown.num_raters
    state = {}
    for key, t in grown.state_dict().items():
        if key in per:
            t = t[(k - 1) * (t.shape[0] // k) :]
        state[key] = t.clone()
    solo.load_state_dict(state, strict=True)
    return solo


def _copy_back(solo, grown, per: dict) -> None:
    k = grown.num_raters
    target = dict(grown.named_parameters())
    with torch.no_grad():
        for key, t in solo.state_dict().items():
            if key in per:
                p = target[key]
                p[(k - 1) * (p.shape[0] // k) :] = t


def iter_fit_persona(
    model,
    name: str,
    train_data: dict,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH,
    lr: float | None = None,
    seed: int = 0,
):
    """Generator: grow ``model`` by persona ``name`` (starting from the persona closest on
    ``train_data``) and fit only its own blocks; yields Progress (step, loss), returns :class:`_Fitted`."""
    if not model.capabilities.personalized or not model.persona_tensors():
        raise NoPersonas(f"{model.method} has no personas to add to")
    torch.manual_seed(int(seed))
    start = _persona_dice_tensors(model.eval(), train_data)
    source = int(np.argmax(start))
    grown, per = grow_model(model, name, source)
    before = {k: v.clone() for k, v in grown.state_dict().items()}
    solo = solo_model(grown, per)
    for p in solo.parameters():
        p.requires_grad_(False)
    params = dict(solo.named_parameters())
    fitted = [params[key] for key, fit in per.items() if fit]
    for p in fitted:
        p.requires_grad_(True)
    if lr is None:  # the method's own choice, else twice its latent learning rate
        lr = getattr(grown, "PERSONA_LR", None) or 2.0 * float(grown.DEFAULT_LATENT_LR or 1e-3)
    opt = torch.optim.Adam(fitted, lr=float(lr))
    keys = sorted(train_data)
    sizes = np.array([len(train_data[key][0]) for key in keys], float)
    rng = np.random.default_rng(int(seed))
    result = _Fitted(grown, [], grown.rater_names[source], int(steps), float(lr))
    solo.eval()  # frozen BatchNorm statistics, no dropout: only the new persona's blocks change
    yield Progress(0, int(steps), f"starting from persona {result.source}")
    for step in range(1, int(steps) + 1):
        key = keys[int(rng.choice(len(keys), p=sizes / sizes.sum()))]
        x, y, _ = train_data[key]
        idx = torch.from_numpy(rng.choice(len(x), size=min(int(batch_size), len(x)), replace=False))
        out = solo.loss(
            {"image": x[idx], "masks": y[idx], "mask_valid": torch.ones(len(idx), 1, dtype=torch.bool)}, step
        )
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        loss = float(out["loss"].detach())
        if not math.isfinite(loss):
            raise PersonaFitError(f"the fit diverged at step {step} (loss {loss}); try fewer steps")
        result.losses.append(loss)
        yield Progress(step, int(steps), f"step {step}/{steps}, loss {loss:.4f}")
    _copy_back(solo, grown, per)
    for p in grown.parameters():
        p.requires_grad_(False)
    grown.finish_new_persona()
    _check_frozen(grown, before, per)
    return result


def _check_frozen(grown, before: dict, per: dict) -> None:
    """Every existing weight (and every existing persona's block) is bit-identical after the fit."""
    k = grown.num_raters
    for key, t in grown.state_dict().items():
        old = before[key]
        if per.get(key):
            b = t.shape[0] // k
            t, old = t[: (k - 1) * b], old[: (k - 1) * b]
        if not torch.equal(t, old):
            raise PersonaFitError(f"internal error: {key} changed while fitting the new persona")


# ----------------------------------------------------------------------------- the whole job
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def iter_add_persona(
    checkpoint,
    project,
    rater: str,
    out,
    steps: int = DEFAULT_STEPS,
    *,
    seed: int = 0,
    lr: float | None = None,
    batch_size: int = DEFAULT_BATCH,
):
    """Generator: fit ``rater``'s persona from ``project`` into a new checkpoint ``out``.

    ``checkpoint``: a path or a bundled / cached model name. Yields Progress; returns a report dict
    (``out``, ``persona``, ``held_out`` ids, ``held_out_dice`` {persona: Dice}, ``new_dice``,
    ``best_existing`` (name, Dice), ``improvement``, ``text``). Raises :class:`NoPersonas` (with
    ``.report``, the nearest-persona report) or :class:`PersonaFitError`; nothing is written then,
    nor when the generator is closed (Cancel)."""
    from ..annotation.store import AnnotationStore
    from ..datasets.case import DatasetError
    from .engine import InferenceEngine, ModelLoadError

    t0 = time.perf_counter()
    out = Path(out).expanduser()
    try:
        engine = InferenceEngine.load(checkpoint, device="cpu", precision="fp32")
    except ModelLoadError as e:
        raise PersonaFitError(str(e)) from None
    src = _checkpoint_path(checkpoint)
    if src is not None and out.resolve() == src.resolve():
        raise PersonaFitError(
            f"--out {out} is the original checkpoint; the original is never modified: choose a new file"
        )
    if out.suffix != ".pt":
        raise PersonaFitError(f"--out {out} must end in .pt")
    if out.exists():
        raise PersonaFitError(f"--out {out} exists; the result is always a new file: choose another name")
    try:
        store = AnnotationStore(project)
        cases = load_rater_cases(store, rater)
    except DatasetError as e:
        raise PersonaFitError(f"cannot read project {project}: {e}") from None
    if not cases:
        known = ", ".join(store.raters()) or "none"
        raise PersonaFitError(f"rater {rater!r} has no saved masks in {project} (raters: {known})")
    model = engine.model
    if not model.capabilities.personalized or not model.persona_tensors():
        err = NoPersonas(
            f"{model.method} ({engine.name}) has no personas, so it cannot learn your style; "
            "it can only say how close its output is to your masks"
        )
        yield Progress(0, None, "comparing the model's output with your masks")
        err.report = nearest_persona_report(engine, cases)
        raise err
    fit_ids, held_ids = held_out_split([c.case_id for c in cases], seed=seed)
    fit_cases = [c for c in cases if c.case_id in fit_ids]
    held_cases = [c for c in cases if c.case_id in held_ids]
    name = unique_persona_name(model.rater_names, rater)
    yield Progress(
        0,
        int(steps),
        f"fit on {len(fit_cases)}, scored on {len(held_cases)} held-out case(s)"
        + (" (few: a direction, not a size)" if len(held_cases) < 10 else ""),
    )
    data = _prepare(engine, fit_cases)
    fitted = yield from iter_fit_persona(model, name, data, steps, batch_size, lr, seed)
    yield Progress(int(steps), int(steps), f"scoring on {len(held_cases)} held-out case(s)")
    grown_engine = InferenceEngine(fitted.model, engine.card, device="cpu", name=out.stem, precision="fp32")
    dice = persona_dice(grown_engine, held_cases, seed)
    existing = {k: v for k, v in dice.items() if k != name}
    best = max(existing, key=lambda k: (existing[k], k))
    report = {
        "out": str(out),
        "persona": name,
        "rater": rater,
        "method": model.method,
        "steps": int(steps),
        "fit_cases": fit_ids,
        "held_out": held_ids,
        "held_out_dice": dice,
        "new_dice": dice[name],
        "best_existing": [best, existing[best]],
        "improvement": dice[name] - existing[best],
        "started_from": fitted.source,
        "final_loss": fitted.losses[-1] if fitted.losses else None,
        "lr": fitted.lr,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    report["text"] = summary_text(report)
    card = _card(engine, report, cases, project, src, fitted.lr, batch_size, seed)
    save_checkpoint(out, fitted.model, card)
    return report


def summary_text(r: dict) -> str:
    best, bd = r["best_existing"]
    diff = r["improvement"]
    verdict = f"improves on it by {diff:+.3f}" if diff > 0 else f"does not improve on it ({diff:+.3f})"
    return (
        f"held-out Dice vs {r['rater']} on {len(r['held_out'])} case(s): your style is closest to persona "
        f"{best} ({bd:.3f}); the new persona {r['persona']} ({r['new_dice']:.3f}) {verdict}"
    )


def _checkpoint_path(checkpoint) -> Path | None:
    p = Path(str(checkpoint)).expanduser()
    if p.is_file():
        return p
    try:
        from ..modelfiles.registry import find_model

        return Path(find_model(str(checkpoint)))
    except FileNotFoundError:
        return None


def _card(engine, report, cases, project, src, lr, batch_size, seed) -> dict:
    from ..datasets.case_folder import now_iso

    card = copy.deepcopy(engine.card)
    by_id = {c.case_id: c for c in cases}
    entry = {
        "rater": report["rater"],
        "persona": report["persona"],
        "project": str(Path(project).resolve()),
        "cases": [
            {
                "case_id": cid,
                "image_sha256": by_id[cid].image_sha256,
                "mask_sha256": by_id[cid].mask_sha256,
                "use": "held_out" if cid in report["held_out"] else "fit",
            }
            for cid in sorted(by_id)
        ],
        "steps": report["steps"],
        "batch_size": int(batch_size),
        "lr": lr,
        "seed": int(seed),
        "started_from_persona": report["started_from"],
        "final_loss": report["final_loss"],
        "held_out_identity_dice": report["held_out_dice"],
        "held_out_summary": report["text"],
        "frozen": "every weight of the base model; only the new persona's own blocks were fitted",
        "base_checkpoint": {"name": engine.name, "sha256": _sha256_file(src) if src is not None else None},
        "created": now_iso(),
        "wall_seconds": report["wall_seconds"],
    }
    card["rater_names"] = list(engine.rater_names) + [report["persona"]]
    card["personas_added"] = list(card.get("personas_added") or []) + [entry]
    return card


def add_persona(checkpoint, project, rater, out, steps: int = DEFAULT_STEPS, on_progress=None, **kwargs) -> dict:
    """Synchronous :func:`iter_add_persona`."""
    return run_to_completion(iter_add_persona(checkpoint, project, rater, out, steps, **kwargs), on_progress)


def loaded_persona_names(path) -> list[str]:
    """The persona list of a checkpoint as the normal loader sees it (for tests and the CLI)."""
    model, _ = load_checkpoint(path)
    return model.rater_names
