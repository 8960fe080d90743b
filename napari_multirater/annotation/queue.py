"""Which case a rater should annotate next (active collection), and the project's collection settings.

Settings live in the project manifest (``dataset.json``) under ``"collection"``:

* ``target_raters`` (default 3): how many raters each case should have;
* ``repeat_fraction`` (default 0.1): fraction of each rater's own cases they are asked to redo,
  blind (intra-rater repeats, :mod:`.repeats`); 0 switches repeats off;
* ``repeat_gap`` (default 5): a repeat is asked only after at least this many other cases, and
  is mixed into the queue every ``repeat_gap`` cases.

A due repeat (``repeat_gap`` cases saved since the rater's last repeat) comes first, the next
one after ``repeat_gap`` further new cases. The queue (:func:`build_queue`) lists the cases the rater has not annotated, ranked: first the
cases with fewer raters than the target, then by disagreement, highest first: the loaded model's
(inter-persona disagreement, else sample variance; :func:`iter_model_disagreement`, cached per
model and image checksum), or without a model the disagreement among the raters who annotated the
case (1 - mean pairwise Dice). The entries carry no mask and no rater name, so blind mode stays
blind: a rater sees only the order.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..datasets.case import DatasetError
from ..datasets.case_folder import MANIFEST, read_json, validate_manifest, write_json
from ..io.contained import is_inside
from ..progress import Progress
from .repeats import has_repeat

__all__ = [
    "DEFAULT_SETTINGS",
    "QueueEntry",
    "build_queue",
    "collection_settings",
    "enough_raters",
    "iter_model_disagreement",
    "rater_disagreement",
    "set_collection_settings",
]

SETTINGS_KEY = "collection"
DEFAULT_SETTINGS = {"target_raters": 3, "repeat_fraction": 0.1, "repeat_gap": 5, "announce_repeats": True}
CACHE_FILE = Path(".multirater") / "disagreement_cache.json"


def _check_settings(s: dict) -> dict:
    if s is not None and not isinstance(s, dict):
        raise DatasetError(f"collection settings ({SETTINGS_KEY!r} in dataset.json) must be a dict, got {s!r:.60}")
    out = dict(DEFAULT_SETTINGS)
    for k, v in (s or {}).items():
        if k not in DEFAULT_SETTINGS:
            continue
        if k == "announce_repeats":  # False: repeats look like any other case (test-retest designs)
            if not isinstance(v, bool):
                raise DatasetError(f"collection setting announce_repeats must be true or false, got {v!r}")
            out[k] = v
        elif k == "repeat_fraction":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= float(v) <= 1):
                raise DatasetError(f"collection setting repeat_fraction must be a number in [0, 1], got {v!r}")
            out[k] = float(v)
        else:
            lo = 1 if k == "target_raters" else 0
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise DatasetError(f"collection setting {k} must be an integer >= {lo}, got {v!r}")
            out[k] = int(v)
    return out


def collection_settings(store) -> dict:
    """The project's collection settings (defaults filled in)."""
    return _check_settings(store.manifest.get(SETTINGS_KEY))


def set_collection_settings(store, **changes) -> dict:
    """Change settings (validated) in ``dataset.json`` under the project lock; returns them all."""
    new = _check_settings({**collection_settings(store), **changes})
    with store._project_lock():
        m = read_json(store.root / MANIFEST, "project manifest")
        m[SETTINGS_KEY] = new
        validate_manifest(m, str(store.root / MANIFEST))
        write_json(store.root / MANIFEST, m)
    return new


def enough_raters(store) -> tuple[int, int]:
    """``(k, n)``: k of the n cases have at least the target number of raters."""
    target = collection_settings(store)["target_raters"]
    ids = store.case_ids()
    return sum(len(store.annotated_raters(c)) >= target for c in ids), len(ids)


def drafts_line(store) -> str | None:
    """How many saved masks are untouched model pre-fills, left out of every count (None: none)."""
    drafts = store.drafts()
    if not drafts:
        return None
    names = ", ".join(f"{c}/{r}" for c, r in drafts[:5]) + (", ..." if len(drafts) > 5 else "")
    return (
        f"{len(drafts)} unconfirmed model pre-fill(s) not counted ({names}): "
        "a rater edits or confirms a pre-fill to make it an annotation"
    )


_RATER_CACHE: dict = {}  # (case folder, ((rater, mtime, size), ...)) -> score: refreshes stay cheap


def rater_disagreement(store, case_id: str) -> float:
    """1 - mean pairwise Dice among the raters who annotated the case; NaN with fewer than two.
    Cached in memory until one of the case's mask files changes."""
    raters = store.annotated_raters(case_id)
    stamp = []
    for r in raters:
        try:
            st = store.mask_path(case_id, r).stat()
            stamp.append((r, st.st_mtime_ns, st.st_size))
        except (OSError, AttributeError, DatasetError):
            stamp.append((r, None, None))
    key = (str(store.case_dir(case_id).resolve()), tuple(stamp))
    if key not in _RATER_CACHE:
        _RATER_CACHE[key] = _rater_disagreement(store, case_id)
    return _RATER_CACHE[key]


def _rater_disagreement(store, case_id: str) -> float:
    from ..analysis.overlap import dice

    masks = []
    for r in store.annotated_raters(case_id):
        try:
            m, _ = store.load_mask(case_id, r)
        except DatasetError:
            continue
        if m is not None:
            masks.append(m)
    if len(masks) < 2:
        return float("nan")
    d = [dice(masks[i], masks[j]) for i in range(len(masks)) for j in range(i + 1, len(masks))]
    return 1.0 - float(np.mean(d))


# ----------------------------------------------------------------------------- model disagreement
def _cache_path(store) -> Path:
    return store.root / CACHE_FILE


def _cache_usable(store) -> bool:
    """The cache file lies inside the project (no symbolic link out: never read or written then)."""
    p = _cache_path(store)
    return not p.parent.is_symlink() and not p.is_symlink() and is_inside(store.root, p)


def _read_cache(store) -> dict:
    try:
        return read_json(_cache_path(store), "disagreement cache") if _cache_usable(store) else {}
    except DatasetError:
        return {}


def model_key(engine) -> str:
    """Cache key part for a model: its name and a digest of its weights."""
    h = hashlib.sha256()
    for k, v in sorted(engine.model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes()[:4096])
    return f"{engine.name}:{h.hexdigest()[:16]}"


def image_disagreement(engine, image, geometry, samples: int = 8) -> float:
    """Model disagreement on one image/volume: mean inter-persona disagreement (personalized
    models) or sample variance (others) over the pixels any output marks as lesion."""
    personas = engine.capabilities.personalized
    res = engine.predict_volume(
        image,
        geometry,
        samples=0 if personas else samples,
        personas=personas,
        uncertainty=True,
        uncertainty_samples=samples,
    )
    unc = res.uncertainty
    kind = "persona_disagreement" if personas and "persona_disagreement" in unc else "variance"
    region = (
        np.stack(list(res.personas.values())).any(0)
        if personas
        else (res.mean_prob if res.mean_prob is not None else unc[kind]) > 0.05
    )
    if not region.any():
        return 0.0
    return float(np.asarray(unc[kind])[region].mean())


def iter_model_disagreement(engine, store, case_ids, samples: int = 8):
    """Generator: ``{case_id: score}`` for ``case_ids``, cached in the project (keyed by the model
    and the image checksum, so a changed image is recomputed); yields Progress per case."""
    cache = _read_cache(store)
    mkey = model_key(engine)
    out, changed = {}, False
    ids = list(case_ids)
    for i, cid in enumerate(ids):
        sha = store.image_checksum(cid)
        key = f"{mkey}|{sha}"
        if key not in cache:
            image, geometry, _ = store.load_image(cid)
            cache[key] = image_disagreement(engine, image, geometry, samples)
            changed = True
        out[cid] = float(cache[key])
        yield Progress(i + 1, len(ids), f"model disagreement {i + 1}/{len(ids)}")
    if changed and _cache_usable(store):
        try:
            write_json(_cache_path(store), cache)
        except OSError:
            pass  # a read-only project: the scores are still returned, just not cached
    return out


# ----------------------------------------------------------------------------- the queue
@dataclass
class QueueEntry:
    """One case to annotate: no mask, no other rater's name (blind-safe)."""

    case_id: str
    rank: int
    n_raters: int
    needs_raters: bool
    score: float | None
    score_source: str  # "model", "raters" or "none"
    repeat: bool = False
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _own_cases_in_order(store, rater: str) -> list[str]:
    """The rater's annotated cases, oldest save first (sidecar ``created``)."""
    rows = [
        (_created(store.case_dir(cid) / "raters" / f"{rater}.json"), cid)
        for cid in store.case_ids()
        if store.has_mask(cid, rater)
    ]
    return [c for _, c in sorted(rows)]


def _created(path: Path) -> str:
    try:
        return str(read_json(path, "sidecar").get("created", ""))
    except DatasetError:
        return ""


def _saved_since_last_repeat(store, rater: str) -> int:
    """How many cases the rater annotated after their last repeat (all of them before the first)."""
    from .repeats import REPEAT_DIR

    last = max(
        (
            _created(store.case_dir(c) / "raters" / REPEAT_DIR / f"{rater}.json")
            for c in store.case_ids()
            if has_repeat(store, c, rater)
        ),
        default="",
    )
    own = [
        _created(store.case_dir(c) / "raters" / f"{rater}.json") for c in store.case_ids() if store.has_mask(c, rater)
    ]
    return sum(t > last for t in own)


def repeat_candidates(store, rater: str, settings: dict | None = None) -> list[str]:
    """Own cases the rater should redo now: ``repeat_fraction`` of their cases (rounded up, once at
    least ``repeat_gap`` + 1 cases are done), chosen by a seeded shuffle (stable per rater), minus
    the ones already repeated; a case is eligible once ``repeat_gap`` other cases were saved after it."""
    s = settings or collection_settings(store)
    own = _own_cases_in_order(store, rater)
    gap = int(s["repeat_gap"])
    if s["repeat_fraction"] <= 0 or len(own) < gap + 1:
        return []
    wanted = math.ceil(s["repeat_fraction"] * len(own))
    eligible = own[: len(own) - gap]  # at least `gap` other cases saved since
    # a fixed draw per (rater, case): more cases or another percentage never reshuffle earlier choices
    order = sorted(eligible, key=lambda c: hashlib.sha256(f"{rater}/{c}".encode()).hexdigest())
    done = [c for c in own if has_repeat(store, c, rater)]
    return [c for c in order if c not in done][: max(wanted - len(done), 0)]


def build_queue(store, rater: str, model_scores: dict | None = None) -> list[QueueEntry]:
    """The ranked queue for ``rater`` (see the module docstring); ``model_scores``: {case_id: model
    disagreement} from :func:`iter_model_disagreement`, else the raters' disagreement is used.
    Repeats are mixed in after every ``repeat_gap`` new cases (at the end when fewer remain)."""
    s = collection_settings(store)
    target = s["target_raters"]
    todo = [c for c in store.case_ids() if not store.has_mask(c, rater)]
    rows = []
    for cid in todo:
        n = len(store.annotated_raters(cid))
        if model_scores is not None and cid in model_scores:
            score, src = float(model_scores[cid]), "model"
        else:
            score, src = rater_disagreement(store, cid), "raters"
            if not math.isfinite(score):
                score, src = None, "none"
        rows.append((cid, n, n < target, score, src))
    rows.sort(key=lambda r: (not r[2], -(r[3] if r[3] is not None else -1.0), r[0]))
    entries = []
    for cid, n, needs, score, src in rows:
        why = [f"{n} of {target} raters" if needs else f"has {n} raters (target {target})"]
        if store.has_mask(cid, rater, drafts=True):
            why.insert(0, "your pre-fill is not confirmed yet")
        if score is not None:
            why.append(f"{'model' if src == 'model' else 'rater'} disagreement {score:.2f}")
        entries.append(QueueEntry(cid, 0, n, needs, score, src, False, ", ".join(why)))
    gap = int(s["repeat_gap"])
    first = max(gap - _saved_since_last_repeat(store, rater), 0)
    for i, cid in enumerate(repeat_candidates(store, rater, s)):
        rep = QueueEntry(
            cid,
            0,
            len(store.annotated_raters(cid)),
            False,
            None,
            "none",
            True,
            "repeat of one of your cases (drawn again blind; your first mask stays as it is)"
            if s["announce_repeats"]
            else "a case to annotate",
        )
        entries.insert(min(first + i * (gap + 1), len(entries)), rep)
    for i, e in enumerate(entries):
        e.rank = i + 1
    return entries
