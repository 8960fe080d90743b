"""Qt-free inference on 2D images, slices, volumes and regions with any multi-rater checkpoint.

All model calls run under ``torch.inference_mode`` and the engine's precision (``auto``: bf16
autocast + channels_last on CPUs with native bf16 and on CUDA, fp32 elsewhere; outputs are fp32). Randomness is
keyed by ``(seed, slice index, stream)`` through CPU ``torch.Generator`` objects, so re-running with
the same seed reproduces a result exactly on any device, a slice gives the same output whether it
is run alone, in a batch or as part of a volume, and samples do not depend on other requests
(stream 0: samples and latent draws, 1: personas, 2: blends). All ``n`` samples of an image are
decoded in one batched call; the method's deterministic maps are computed per batch of slices.
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from src_training.precision import autocast, cpu_bf16_native, prepare_input, prepare_model, resolve_precision

from ..argtypes import MAX_SAMPLES
from ..io.geometry import Geometry
from ..modelfiles.intensity import InputNormalizer
from ..modelfiles.registry import find_model, is_model_name
from ..progress import Progress, run_to_completion
from . import calibration
from .defaults import DEFAULT_SAMPLES
from .device import resolve_device, run_with_fallback
from .presence_text import PRESENCE_PREFIX
from .roi import ROI, PredictionResult

SAMPLE_KINDS = ("entropy", "variance", "mutual_information")
MAX_MODEL_SIDE = 4096  # pixels per side of a resampled model input
MAX_SAMPLE_BYTES = 8 << 30  # the uint8 sample maps of one prediction
PERSONA_KIND = "persona_disagreement"
LN2 = math.log(2.0)


class ModelLoadError(ValueError):
    """The checkpoint cannot be found or used (the message says why)."""


class NonFiniteInputError(ValueError):
    """The input image holds NaN or infinite values (they would poison every output pixel)."""


def check_finite(image, what: str = "input image", source: str | None = None) -> None:
    """Raise :class:`NonFiniteInputError` naming how many voxels of ``image`` are NaN/inf."""
    arr = np.asarray(image)
    if arr.dtype.kind not in "fc":  # integer / bool images are always finite
        return
    finite = np.isfinite(arr)
    if finite.all():
        return
    bad = int(finite.size - np.count_nonzero(finite))
    n_nan = int(np.count_nonzero(np.isnan(arr)))
    where = f"{source}: " if source else ""
    raise NonFiniteInputError(
        f"{where}{what} has {bad} non-finite voxel(s) of {arr.size} ({n_nan} NaN, {bad - n_nan} inf); "
        "the model cannot run on them (they would make every output pixel NaN): fill or mask them first"
    )


def check_output_size(n_samples: int, region_shape) -> None:
    """Refuse (ValueError) a sample count the prediction could not hold, before anything is allocated."""
    if not 0 <= n_samples <= MAX_SAMPLES:
        raise ValueError(f"the number of samples must be 0 to {MAX_SAMPLES}, got {n_samples}")
    need = n_samples * math.prod(int(v) for v in region_shape)
    if need > MAX_SAMPLE_BYTES:
        raise ValueError(
            f"{n_samples} samples of a {' x '.join(map(str, region_shape))} region need {need / 2**30:.1f} GiB "
            f"(at most {MAX_SAMPLE_BYTES >> 30} GiB): choose fewer samples, a region of interest or one slice"
        )


def spacing_pair(value, what: str = "pixel size") -> tuple[float, float] | None:
    """In-plane (y, x) spacing in mm from a scalar, a pair, or None/0 (= native spacing)."""
    if value is None or (np.isscalar(value) and not value):
        return None
    vals = np.atleast_1d(np.asarray(value, dtype=float)).ravel()
    if vals.size == 1:
        vals = np.repeat(vals, 2)
    if vals.size != 2 or not np.all(np.isfinite(vals)) or np.any(vals <= 0):
        raise ValueError(f"{what} must be a positive number or an in-plane pair [y, x] in mm, got {value!r}")
    return float(vals[0]), float(vals[1])


def slice_seed(seed: int, key: int, stream: int = 0) -> int:
    """A 63-bit seed derived from the request seed, the slice index and a stream id."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(key), int(stream)]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def _generator(seed: int, key: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(slice_seed(seed, key, stream))


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy of Bernoulli(p) in bits (in [0, 1])."""
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * torch.log(p) + (1 - p) * torch.log(1 - p)) / LN2


def sample_uncertainty(probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """entropy of the mean, variance x4 and mutual information from sample probabilities (n, H, W)."""
    mean = probs.mean(0)
    h_mean = binary_entropy(mean)
    return {
        "entropy": h_mean,
        "variance": (probs.var(0, unbiased=False) * 4).clamp(0, 1),
        "mutual_information": (h_mean - binary_entropy(probs).mean(0)).clamp(0, 1),
    }


@contextmanager
def shared_encoding(model):
    """Within the block, the model's ``_encode`` (backbone + prior: most of the cost of a call) runs
    once per input tensor: ``sample``, ``personalize`` and ``uncertainty`` of the same slice reuse it.
    The encoding is deterministic in eval mode, so outputs are identical to separate calls."""
    if not callable(getattr(model, "_encode", None)) or "_encode" in vars(model):
        yield
        return
    original = model._encode
    cache: dict = {}

    def cached(x):
        key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype, str(x.device))  # x is not modified here
        if key not in cache:
            cache[key] = (x, original(x))  # keeps x alive so its memory (the key) is not reused
        return cache[key][1]

    model._encode = cached
    try:
        yield
    finally:
        del model._encode
        cache.clear()


def eta_text(seconds: float) -> str:
    """``about 40 s left`` / ``about 3 min left``."""
    return f"about {seconds:.0f} s left" if seconds < 90 else f"about {seconds / 60:.0f} min left"


def slices_text(keys, depth: int) -> str:
    """Slice indices as the user gives them (``--slice 12`` -> ``slice 12 of 0-23``)."""
    if depth <= 1:
        return "image"
    what = f"slice {keys[0]}" if len(keys) == 1 else f"slices {keys[0]}-{keys[-1]}"
    return f"{what} of 0-{depth - 1}"


@contextmanager
def torch_threads(n: int | None):
    """Within the block torch uses ``n`` intra-op threads (None: unchanged); restored after."""
    before = torch.get_num_threads()
    if n and n != before:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@dataclass
class Encoded:
    """An image encoded once for the latent explorer (model context + padding to undo)."""

    ctx: dict
    shape: tuple[int, int]
    pad: tuple[int, int, int, int]  # top, bottom, left, right
    device: torch.device


class InferenceEngine:
    """A loaded model plus everything needed to feed it raw images (see module docstring)."""

    def __init__(
        self,
        model,
        card: dict,
        device="auto",
        name: str = "model",
        image_units: str = "auto",
        lidc_mapping: str = "fixed",
        target_spacing_mm: float | tuple | str | None = None,
        precision: str = "auto",
        threads: int | str | None = None,
    ):
        """``threads``: None leaves torch's thread count alone; an int fixes it for the engine's
        calls; ``"auto"`` (the default of :meth:`load`) calibrates it on CPU, then the precision
        where ``precision`` is ``auto`` (:meth:`calibrate`)."""
        if not (threads is None or threads == "auto" or (isinstance(threads, int) and threads >= 1)):
            raise ValueError(f"threads must be 'auto' or a positive number, got {threads!r}")
        self.model = model.eval()
        self.card = dict(card or {})
        self.name = name
        self.device, self.device_message = (
            resolve_device(device) if isinstance(device, str) else (torch.device(device), str(device))
        )
        self.warnings: list[str] = []
        self.normalizer = InputNormalizer.from_card(self.card, image_units, lidc_mapping)
        inp = self.card.get("input") or {}
        self.pad_multiple = int(inp.get("pad_multiple", 16))
        # in-plane (y, x) mm the model runs at: explicit, else the card's input.pixel_size_mm (median
        # training spacing), else None = native spacing (e.g. LIDC crops of unknown spacing: null)
        if isinstance(target_spacing_mm, str):
            if target_spacing_mm != "native":
                raise ValueError(f"target spacing must be mm or 'native', got {target_spacing_mm!r}")
            self.target_spacing_mm = None
        else:
            self.target_spacing_mm = spacing_pair(
                target_spacing_mm if target_spacing_mm is not None else inp.get("pixel_size_mm"), "input.pixel_size_mm"
            )
        self.precision_choice = precision
        self.precision = resolve_precision(precision, self.device)
        self.threads_choice = threads
        self.threads: int | None = threads if isinstance(threads, int) else None
        self.calibration: calibration.Choice | None = None
        self._calibrated_at: float | None = None
        self._call(lambda dev: None)  # moves the model (falls back to CPU if the GPU refuses)
        if threads == "auto":
            self.calibrate()

    # ------------------------------------------------------------------ loading / info
    @classmethod
    def load(cls, name_or_path, device="auto", **kwargs) -> InferenceEngine:
        """Load a checkpoint file, or a bundled/cached model by name (:func:`find_model`)."""
        return run_to_completion(cls.iter_load(name_or_path, device, **kwargs))

    @classmethod
    def iter_load(cls, name_or_path, device="auto", **kwargs):
        """Generator form of :meth:`load` (yields :class:`Progress`, returns the engine) for workers."""
        kwargs.setdefault("threads", calibration.threads_from_env())
        yield Progress(0, 3, f"finding {name_or_path}")
        text = str(name_or_path)
        path = Path(text).expanduser()
        if not path.is_file():
            if not is_model_name(text):
                raise ModelLoadError(f"checkpoint not found or not a file: {path}")
            try:
                path = find_model(text)
            except FileNotFoundError as e:
                raise ModelLoadError(str(e)) from None
        from src_training.checkpoint import CheckpointError, load_checkpoint

        yield Progress(1, 3, f"reading {path.name}")
        try:
            model, card = load_checkpoint(path, map_location="cpu")
        except CheckpointError as e:
            raise ModelLoadError(str(e)) from None
        except Exception as e:  # noqa: BLE001 - any unreadable file is a load error for the user
            raise ModelLoadError(f"{path}: cannot load checkpoint: {e}") from None
        yield Progress(2, 3, f"moving {path.stem} to {device} (and timing threads / precision on this machine)")
        try:
            engine = cls(model, card, device=device, name=path.stem, **kwargs)
        except ValueError as e:
            raise ModelLoadError(f"{path}: {e}") from None
        yield Progress(3, 3, f"loaded {path.stem}")
        return engine

    @property
    def capabilities(self):
        return self.model.capabilities

    @property
    def rater_names(self) -> list[str]:
        return list(self.model.rater_names)

    def summary(self, spacing_yx=None) -> dict:
        """Short, display-ready, plain-language description of the model card (``spacing_yx``: the
        image's in-plane pixel size in mm, to state the field of view in mm for native-size models)."""
        from . import model_info as mi

        c, td = self.card, self.card.get("training_data") or {}
        data = Path(str(td.get("path", "?"))).name or "?"
        if "train_slices" in td:
            data += f" ({td['train_slices']} slices, {td.get('train_patients', '?')} patients)"
        caps = self.capabilities
        can = [
            w
            for w, v in (
                ("varied samples", caps.diverse),
                ("one outline per rater", caps.personalized),
                ("blends between raters", caps.blend),
                ("a latent space to explore", caps.latent_dim > 0),
            )
            if v
        ]
        out = {
            "name": self.name,
            "for": mi.purpose(c, self.name),
            "method": c.get("method", self.model.method),
            "raters": ", ".join(self.rater_names),
            "trained on": mi.describe_fov(mi.field_of_view(c), spacing_yx),
            "training data": data,
            "validation": mi.plain_metrics(c),
            "intensity": self.normalizer.describe(),
            "resolution": self.describe_resolution(),
            "can show": ", ".join(can) or "one prediction",
            "device": self.device_message,
            "precision": self.precision.describe(),
        }
        if self.calibration is not None:
            out["threads"] = self.calibration.describe()
        note = mi.rater_note(c)
        if note:
            out["raters"] += f" ({note})"
        return out

    def field_of_view(self) -> dict | None:
        """The training field of view (see :mod:`.model_info`)."""
        from .model_info import field_of_view

        return field_of_view(self.card)

    def set_precision(self, choice: str) -> str:
        """Switch precision (``auto``/``fp32``/``bf16``) for later calls; returns its description.
        ``auto`` with ``threads="auto"`` re-calibrates (threads, then precision)."""
        self.precision = resolve_precision(choice, self.device)
        self.precision_choice = choice
        prepare_model(self.model, self.precision)
        if choice == "auto" and self.threads_choice == "auto":
            self.calibrate()
        return self.precision.describe()

    # ------------------------------------------------------------------ contention-aware calibration
    def _probe(self, size: int = 128, n: int = 4):
        """``probe(threads, precision) -> seconds`` of one ``sample`` call (n samples, one
        ``size`` x ``size`` image): the calibration workload."""
        m = self.pad_multiple
        s = max(m, m * round(size / m))
        x0 = torch.randn(1, self.model.in_channels, s, s, generator=torch.Generator().manual_seed(0))

        def probe(threads: int, precision: str) -> float:
            prec = resolve_precision(precision, "cpu")
            prepare_model(self.model, prec)
            x = prepare_input(x0, prec)
            with torch_threads(threads), torch.inference_mode(), autocast(prec, "cpu"):
                t = time.perf_counter()
                self.model.sample(x, n, torch.Generator().manual_seed(0))
                return time.perf_counter() - t

        return probe

    def calibrate(
        self, precision: bool = True, probe=None, now: float | None = None, reuse: bool = True
    ) -> calibration.Choice | None:
        """On CPU: time the thread counts (then, with ``precision`` and an ``auto`` precision, fp32
        against bf16 where the CPU has native bf16) and keep the fastest (the engine's threads are
        ``auto`` from then on); returns the choice (also in ``self.calibration``), None on other devices. ``reuse``: take the thread count another
        engine of this process timed less than ``RECHECK_S`` ago. ``probe``: injected timings (tests)."""
        if self.device.type != "cpu":
            return None
        now = time.monotonic() if now is None else now
        known = calibration.recent_threads(now) if reuse else None
        default_threads = known or self.threads or torch.get_num_threads()
        cands = [known] if known else calibration.thread_candidates(max(default_threads, calibration.usable_cores()))
        auto_prec = precision and self.precision_choice == "auto"
        precisions = ["fp32", "bf16"] if auto_prec and cpu_bf16_native()[0] else [self.precision.name]
        choice = calibration.choose(
            probe or self._probe(),
            cands,
            precisions,
            (default_threads, self.precision.name),
            loadavg=calibration.loadavg_1min(),
        )
        self.threads, self.threads_choice = choice.threads, "auto"  # later runs re-check it
        if auto_prec:
            chosen = resolve_precision(choice.precision, "cpu")
            self.precision = dataclasses.replace(chosen, reason=f"auto: calibrated, {chosen.reason}")
        prepare_model(self.model, self.precision)
        self.calibration = choice
        self._calibrated_at = now
        calibration.remember_threads(choice.threads, now)
        return choice

    def recheck(self, now: float | None = None, probe=None) -> bool:
        """At the start of a run: with ``threads="auto"``, re-time the thread count (precision is
        kept: results of one session stay comparable) when the last calibration is older than
        :data:`calibration.RECHECK_S`. Returns True when it re-calibrated."""
        now = time.monotonic() if now is None else now
        if self.threads_choice != "auto" or self._calibrated_at is None:
            return False
        if now - self._calibrated_at < calibration.RECHECK_S:
            return False
        recent = calibration.recent_threads(now)
        if recent is not None:  # another engine of this process re-timed the machine a moment ago
            self.threads, self._calibrated_at = recent, now
            return False
        return self.calibrate(precision=False, probe=probe, now=now, reuse=False) is not None

    def describe_resolution(self) -> str:
        t = self.target_spacing_mm
        return "native pixel size" if t is None else f"resampled to {t[0]:g} x {t[1]:g} mm"

    # ------------------------------------------------------------------ device handling
    def _call(self, fn):
        """Run ``fn(device)`` under inference mode; a GPU failure moves the model to CPU and retries."""

        def run(dev):
            if next(self.model.parameters()).device != dev:
                self.model.to(dev)
                prepare_model(self.model, self.precision)
            with ExitStack() as stack:
                if dev.type == "cpu":
                    stack.enter_context(torch_threads(self.threads))
                stack.enter_context(torch.inference_mode())
                stack.enter_context(autocast(self.precision, dev))
                return fn(dev)

        def fallback(warning):
            self.warnings.append(warning)
            self.device = torch.device("cpu")
            self.device_message = f"cpu (fell back: {warning})"
            self.precision = resolve_precision(self.precision_choice, self.device)
            prepare_model(self.model, self.precision)

        return run_with_fallback(run, self.device, on_fallback=fallback)[0]

    # ------------------------------------------------------------------ input preparation
    def _prepare(self, images: np.ndarray, dev, size=None):
        """Raw (B, h, w) -> normalised, optionally resized to ``size``, edge-padded (B, 1, Hp, Wp).
        Raises :class:`NonFiniteInputError` for NaN/inf input (they would poison every output)."""
        check_finite(images)
        x = torch.from_numpy(self.normalizer(images))[:, None]
        if size is not None and tuple(size) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
        h, w = x.shape[-2:]
        m = self.pad_multiple
        ph, pw = (-h) % m, (-w) % m
        pad = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
        if ph or pw:
            x = F.pad(x, (pad[2], pad[3], pad[0], pad[1]), mode="replicate")
        return prepare_input(x.to(dev), self.precision), pad

    @staticmethod
    def _unpad(t: torch.Tensor, pad) -> torch.Tensor:
        top, bottom, left, right = pad
        return t[..., top : t.shape[-2] - bottom, left : t.shape[-1] - right]

    @staticmethod
    def _as_batch(image) -> tuple[np.ndarray, bool]:
        arr = np.asarray(image)
        if arr.ndim == 2:
            return arr[None], True
        if arr.ndim != 3:
            raise ValueError(f"expected a 2D image (H, W) or a batch (B, H, W), got shape {arr.shape}")
        return arr, False

    # ------------------------------------------------------------------ per-image primitives
    def _sample_probs(self, xb, n: int, seed: int, key: int, pad) -> torch.Tensor:
        logits = self.model.sample(xb, int(n), _generator(seed, key, 0))
        return self._unpad(torch.sigmoid(self._finite_or_warn(logits[0].float(), "samples")), pad)

    def _persona_probs(self, xb, seed: int, key: int, pad) -> torch.Tensor:
        logits = self.model.personalize(xb, _generator(seed, key, 1))
        return self._unpad(torch.sigmoid(self._finite_or_warn(logits[0].float(), "personas")), pad)

    def _finite_or_warn(self, logits: torch.Tensor, what: str) -> torch.Tensor:
        """Non-finite model outputs (NaN weights, overflow) would read as a confident "no lesion":
        add a warning (once per kind) naming how many pixels; the outputs are returned unchanged."""
        bad = int((~torch.isfinite(logits)).sum())
        if bad:
            text = (
                f"the model's {what} have {bad} non-finite value(s) of {logits.numel()} (NaN/inf): those pixels "
                "are shown as background and are NOT a prediction (damaged checkpoint or numeric overflow)"
            )
            if not any(w.startswith(f"the model's {what} have") for w in self.warnings):
                self.warnings.append(text)
        return logits

    def _method_maps(self, x, pad) -> tuple[dict, dict]:
        """The model's own uncertainty: maps (B, H, W) and per-image scores (B,)."""
        maps, scores = {}, {}
        for k, v in (self.model.uncertainty(x) or {}).items():
            v = v.float()
            if v.dim() == 3:
                maps[k] = self._unpad(v, pad).clamp(0, 1)
            else:
                scores[k] = v.reshape(v.shape[0])
        return maps, scores

    # ------------------------------------------------------------------ 2D API
    def sample(self, image, n: int = 16, seed: int = 0) -> np.ndarray:
        """Sample probabilities (n, H, W) for an image, (B, n, H, W) for a batch (image b uses key b)."""
        batch, single = self._as_batch(image)
        check_output_size(int(n), batch.shape)

        def fn(dev):
            x, pad = self._prepare(batch, dev)
            return (
                torch.stack([self._sample_probs(x[b : b + 1], n, seed, b, pad) for b in range(len(batch))])
                .cpu()
                .numpy()
            )

        out = self._call(fn)
        return out[0] if single else out

    def personas(self, image, seed: int = 0) -> np.ndarray:
        """One probability map per rater (K, H, W) (same for every rater if not personalized)."""
        batch, single = self._as_batch(image)

        def fn(dev):
            x, pad = self._prepare(batch, dev)
            return (
                torch.stack([self._persona_probs(x[b : b + 1], seed, b, pad) for b in range(len(batch))]).cpu().numpy()
            )

        out = self._call(fn)
        return out[0] if single else out

    def uncertainty_kinds(self) -> list[str]:
        caps = self.capabilities
        kinds = list(SAMPLE_KINDS) + ([PERSONA_KIND] if caps.personalized else [])
        return kinds + [k for k in caps.uncertainty if k not in kinds]

    def uncertainty(self, image, n: int = 16, seed: int = 0) -> dict:
        """Float maps (H, W) in [0, 1]: entropy, variance, mutual_information, persona_disagreement
        (personalized models) and the method's own maps; per-image scores (e.g. quality) as floats."""
        arr = np.asarray(image)
        if arr.ndim != 2:
            raise ValueError(f"uncertainty() takes one 2D image, got shape {arr.shape}")
        r = self._stack(arr[None], [0], int(n), self.capabilities.personalized, True, seed, None)
        out = {k: v[0] for k, v in r["uncertainty"].items()}
        out.update({k: float(v[0]) for k, v in r["scores"].items()})
        return out

    def blend(self, image, i: int, j: int, t: float, seed: int = 0) -> np.ndarray:
        """Probability map (H, W) of a persona between raters i and j (t = 0 -> i, 1 -> j)."""
        if not self.capabilities.blend:
            raise ValueError(f"{self.model.method} cannot blend personas")

        def fn(dev):
            x, pad = self._prepare(np.asarray(image)[None], dev)
            logits = self.model.blend(x, int(i), int(j), float(t), generator=_generator(seed, 0, 2))
            return self._unpad(torch.sigmoid(logits[0, 0].float()), pad).cpu().numpy()

        return self._call(fn)

    # ------------------------------------------------------------------ latent explorer
    def encode(self, image) -> Encoded:
        arr = np.asarray(image)
        if arr.ndim != 2:
            raise ValueError(f"encode() takes one 2D image, got shape {arr.shape}")

        def fn(dev):
            x, pad = self._prepare(arr[None], dev)
            return Encoded(self.model.encode(x), arr.shape, pad, dev)

        return self._call(fn)

    def latent_prior(self, enc: Encoded):
        """``(mu (L,), sigma (L,))`` as numpy, or None when the model has no explorable latent."""
        prior = self.model.latent_prior(enc.ctx) if self.capabilities.latent_dim > 0 else None
        if prior is None:
            return None
        mu, sigma = prior
        return mu[0].float().cpu().numpy(), sigma[0].float().cpu().numpy()

    def decode(self, enc: Encoded, z) -> np.ndarray:
        """Probabilities (N, H, W) for latents z (L,) or (N, L)."""
        zt = torch.as_tensor(np.atleast_2d(np.asarray(z, dtype=np.float32)))

        def fn(dev):
            if enc.device != dev:  # after a CPU fallback
                enc.ctx = _to_device(enc.ctx, dev)
                enc.device = dev
            logits = self.model.decode(enc.ctx, zt[None].to(dev))
            return self._unpad(torch.sigmoid(logits[0].float()), enc.pad).cpu().numpy()

        return self._call(fn)

    def latent_samples(self, enc: Encoded, n: int, seed: int = 0, key: int = 0) -> np.ndarray:
        """n prior draws mu + sigma * eps (n, L); eps comes from the same stream as ``sample``, so
        for Gaussian-prior models (Prob. U-Net, D-Persona) they are the latents of its samples."""
        mu, sigma = self._prior_or_raise(enc)
        eps = torch.randn((1, int(n), len(mu)), generator=_generator(seed, key, 0), dtype=torch.float32)
        return mu[None] + sigma[None] * eps[0].numpy()

    def latent_directions(self, enc: Encoded, mode: str = "axes", n: int = 64, seed: int = 0):
        """Slider directions in units of prior sigma: ``(D (L, L) orthonormal rows, strength (L,))``.

        ``axes``: the prior's own axes (it is axis-aligned). ``principal``: the latent directions that
        change the output most, from an SVD of the linear fit output ~ eps over ``n`` prior draws.
        """
        return run_to_completion(self.iter_latent_directions(enc, mode, n, seed))

    def iter_latent_directions(self, enc: Encoded, mode: str = "axes", n: int = 64, seed: int = 0, chunk: int = 8):
        """Generator form of :meth:`latent_directions`: one :class:`Progress` per ``chunk`` decodes
        (cancellable in a worker); the result is identical to the one-shot computation."""
        mu, sigma = self._prior_or_raise(enc)
        dim = len(mu)
        if mode == "axes":
            return np.eye(dim, dtype=np.float32), np.ones(dim, np.float32)
        if mode != "principal":
            raise ValueError("mode must be 'axes' or 'principal'")
        n, chunk = int(n), max(int(chunk), 1)
        eps = torch.randn((n, dim), generator=_generator(seed, 0, 3)).numpy()
        z = mu[None] + sigma[None] * eps
        parts = []
        yield Progress(0, n, f"principal directions: {n} decodes")
        for c0 in range(0, n, chunk):
            parts.append(self.decode(enc, z[c0 : c0 + chunk]).reshape(len(z[c0 : c0 + chunk]), -1))
            yield Progress(min(c0 + chunk, n), n, f"decode {min(c0 + chunk, n)}/{n}")
        y = np.concatenate(parts)
        jac, *_ = np.linalg.lstsq(eps - eps.mean(0), y - y.mean(0), rcond=None)
        u, s, _ = np.linalg.svd(jac, full_matrices=False)
        return u.T.astype(np.float32), s.astype(np.float32)

    def latent_from_coefficients(self, enc: Encoded, coeffs, directions=None) -> np.ndarray:
        """Latent z = mu + sigma * (coeffs @ directions) for slider values in units of sigma."""
        mu, sigma = self._prior_or_raise(enc)
        c = np.asarray(coeffs, dtype=np.float32)
        d = np.eye(len(mu), dtype=np.float32) if directions is None else np.asarray(directions, np.float32)
        return mu + sigma * (c @ d)

    def interpolate(self, enc: Encoded, z_a, z_b, t: float) -> np.ndarray:
        """Decoded probability map (H, W) at (1 - t) z_a + t z_b."""
        z = (1 - float(t)) * np.asarray(z_a, np.float32) + float(t) * np.asarray(z_b, np.float32)
        return self.decode(enc, z)[0]

    def _prior_or_raise(self, enc):
        prior = self.latent_prior(enc)
        if prior is None:
            raise ValueError(f"{self.model.method} has no latent space to explore")
        return prior

    # ------------------------------------------------------------------ stacks and volumes
    def _stack(self, images, keys, n, personas, uncertainty, seed, size) -> dict:
        """Run a stack of raw slices (B, h, w); outputs at (h, w) (resampled back from ``size``)."""
        h, w = images.shape[-2:]
        n_eff = int(n) if n else 0

        def back(t, mode):  # (B, C, H', W') at model resolution -> (B, C, h, w)
            if tuple(t.shape[-2:]) == (h, w):
                return t
            if mode == "nearest":
                return F.interpolate(t.float(), size=(h, w), mode="nearest-exact")
            return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)

        def fn(dev):
            with shared_encoding(self.model):
                return run(dev)

        def run(dev):
            x, pad = self._prepare(images, dev, size)
            out = {"samples": None, "mean_prob": None, "personas": None, "uncertainty": {}, "scores": {}}
            if n_eff:
                probs = torch.stack(
                    [self._sample_probs(x[b : b + 1], n_eff, seed, keys[b], pad) for b in range(len(keys))]
                )
                out["samples"] = back((probs > 0.5).to(torch.uint8), "nearest").to(torch.uint8)
                out["mean_prob"] = back(probs.mean(1, keepdim=True), "linear")[:, 0]
                if uncertainty:
                    maps = [sample_uncertainty(p) for p in probs]
                    for k in SAMPLE_KINDS:
                        out["uncertainty"][k] = back(torch.stack([m[k] for m in maps])[:, None], "linear")[:, 0]
            if personas or (uncertainty and self.capabilities.personalized):
                pp = torch.stack([self._persona_probs(x[b : b + 1], seed, keys[b], pad) for b in range(len(keys))])
                if personas:
                    out["personas"] = back((pp > 0.5).to(torch.uint8), "nearest").to(torch.uint8)
                if uncertainty and self.capabilities.personalized:
                    dis = (pp.var(1, unbiased=False) * 4).clamp(0, 1)
                    out["uncertainty"][PERSONA_KIND] = back(dis[:, None], "linear")[:, 0]
            if uncertainty:
                maps, scores = self._method_maps(x, pad)
                out["uncertainty"].update({k: back(v[:, None], "linear")[:, 0] for k, v in maps.items()})
                out["scores"] = scores
            if self.capabilities.presence:  # P(rater k marks a lesion) per slice, as per-image scores
                p = self.model.presence(x).float()
                out["scores"].update({f"{PRESENCE_PREFIX}{r}": p[:, k] for k, r in enumerate(self.rater_names)})
            return _to_numpy(out)

        return self._call(fn)

    def iter_predict_volume(
        self,
        volume,
        geometry: Geometry | None = None,
        *,
        samples: int = DEFAULT_SAMPLES,
        personas: bool = False,
        uncertainty: bool = False,
        seed: int = 0,
        batch_slices: int = 8,
        roi: ROI | None = None,
        slice_index: int | None = None,
        target_spacing_mm: float | tuple | str | None = None,
        uncertainty_samples: int = DEFAULT_SAMPLES,
        source: str | None = None,
    ):
        """Generator: yields :class:`Progress` per chunk of slices, returns a :class:`PredictionResult`.

        ``volume``: a 2D image (H, W) or a volume (Z, Y, X) in raw units. ``slice_index`` restricts
        the run to one axial slice, ``roi`` to a box (the two combine); results are on the full
        input grid (zero outside the region) with ``result.region`` telling what was computed.
        In-plane, each slice crop is resampled to ``target_spacing_mm`` (mm, scalar or (y, x); default:
        the card's ``input.pixel_size_mm`` if any, else native spacing; ``"native"`` forces native),
        padded to the card's multiple, run and resampled back (masks nearest, probabilities linear).
        Without ``geometry`` the spacing is unknown and the card's resolution is not applied.
        Uncertainty without samples draws ``uncertainty_samples``. NaN/inf voxels in the region raise
        :class:`NonFiniteInputError` before anything runs (``source``, e.g. the file, names the input).
        """
        vol = np.asarray(volume)
        if vol.ndim not in (2, 3):
            raise ValueError(f"expected a 2D image or a 3D volume, got shape {vol.shape}")
        is2d = vol.ndim == 2
        vol3 = vol[None] if is2d else vol
        has_geometry = geometry is not None
        geometry = geometry or Geometry.identity(vol.ndim)
        region = (roi or ROI()).resolve(vol3.shape, geometry)
        if slice_index is not None and not is2d:
            z = int(slice_index)
            if not (region[0].start <= z < region[0].stop):
                raise ValueError(f"slice {z} is outside the region of interest / volume (0..{vol3.shape[0] - 1})")
            region = (slice(z, z + 1), *region[1:])
        zs = list(range(region[0].start, region[0].stop))
        check_finite(
            vol3[region],
            "input image" if _region_is_full(region, vol3.shape) else "the region of the input image to predict",
            source,
        )
        crop_h, crop_w = region[1].stop - region[1].start, region[2].stop - region[2].start
        size = self._model_size((crop_h, crop_w), geometry if has_geometry else None, target_spacing_mm)
        n = int(samples) if samples else (int(uncertainty_samples) if uncertainty else 0)
        rshape = (len(zs), crop_h, crop_w)
        check_output_size(n, rshape)
        res = {
            "samples": np.zeros((n, *rshape), np.uint8) if samples else None,
            "mean_prob": np.zeros(rshape, np.float32) if n else None,
            "personas": {r: np.zeros(rshape, np.uint8) for r in self.rater_names} if personas else {},
            "uncertainty": {},
            "scores": {},
        }
        batch_slices = max(int(batch_slices), 1)
        self.recheck()  # a run starts: re-time the thread count if the last calibration is old
        yield Progress(0, len(zs), f"{len(zs)} slice(s), {n} sample(s) on {self.device.type}")
        t_start = time.perf_counter()
        for c0 in range(0, len(zs), batch_slices):
            keys = zs[c0 : c0 + batch_slices]
            imgs = vol3[keys[0] : keys[-1] + 1, region[1], region[2]]
            out = self._stack(imgs, keys, n, personas, uncertainty, seed, size)
            sl = slice(c0, c0 + len(keys))
            if res["samples"] is not None:
                res["samples"][:, sl] = out["samples"].transpose(1, 0, 2, 3)
            if res["mean_prob"] is not None:
                res["mean_prob"][sl] = out["mean_prob"]
            for k, r in enumerate(res["personas"]):
                res["personas"][r][sl] = out["personas"][:, k]
            for k, v in out["uncertainty"].items():
                res["uncertainty"].setdefault(k, np.zeros(rshape, np.float32))[sl] = v
            for k, v in out["scores"].items():
                res["scores"].setdefault(k, np.zeros(len(zs), np.float32))[sl] = v
            done = c0 + len(keys)
            left = (time.perf_counter() - t_start) / done * (len(zs) - done)
            yield Progress(
                done,
                len(zs),
                slices_text(keys, vol3.shape[0] if not is2d else 1) + (f", {eta_text(left)}" if done < len(zs) else ""),
            )
        return self._result(res, vol.shape, region, is2d, geometry, size, seed, n)

    def predict_volume(self, volume, geometry=None, on_progress=None, **kwargs) -> PredictionResult:
        """Synchronous :meth:`iter_predict_volume`."""
        return run_to_completion(self.iter_predict_volume(volume, geometry, **kwargs), on_progress)

    def _model_size(self, crop_hw, geometry, target_spacing_mm):
        """(H, W) the crop is resampled to, or None for native size (no target, unknown spacing)."""
        if isinstance(target_spacing_mm, str):
            if target_spacing_mm != "native":
                raise ValueError(f"target spacing must be mm or 'native', got {target_spacing_mm!r}")
            return None
        if target_spacing_mm is not None:  # explicit: the caller vouches for the spacing (1 mm without geometry)
            target = spacing_pair(target_spacing_mm, "target spacing")
            geometry = geometry or Geometry.identity(2)
        else:  # the card's training resolution: only when the image's spacing is known
            target = self.target_spacing_mm
        if target is None or geometry is None:
            return None
        sy, sx = (abs(float(s)) for s in geometry.scale_zyx[-2:])
        size = (crop_hw[0] * sy / target[0], crop_hw[1] * sx / target[1])
        if max(size) > MAX_MODEL_SIDE:  # checked before anything of that size is allocated
            raise ValueError(
                f"resampling the {crop_hw[0]} x {crop_hw[1]} px region to {target[0]:g} x {target[1]:g} mm pixels "
                f"would make a {size[0]:.3g} x {size[1]:.3g} px model input (at most {MAX_MODEL_SIDE} per side): "
                "choose a larger target pixel size or a smaller region"
            )
        return (max(int(round(size[0])), 1), max(int(round(size[1])), 1))

    def _result(self, res, shape, region, is2d, geometry, size, seed, n) -> PredictionResult:
        def sq(a, lead=0):
            if a is None or not is2d:
                return a
            return a[(slice(None),) * lead + (0,)]

        return PredictionResult(
            shape=tuple(shape),
            region=region[1:] if is2d else region,
            samples_region=sq(res["samples"], 1),
            mean_prob_region=sq(res["mean_prob"]),
            personas_region={k: sq(v) for k, v in res["personas"].items()},
            uncertainty_region={k: sq(v) for k, v in res["uncertainty"].items()},
            scores=dict(res["scores"]),
            geometry=geometry,
            info={
                "model": self.name,
                "method": self.model.method,
                "seed": int(seed),
                "samples": n,
                "device": self.device_message,
                "warnings": list(self.warnings),
                "intensity": self.normalizer.describe(),
                "model_size": size,
            },
        )


def _region_is_full(region, shape) -> bool:
    return all(s.start == 0 and s.stop == n for s, n in zip(region, shape))


def _to_numpy(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().float().cpu().numpy() if obj.dtype != torch.uint8 else obj.cpu().numpy()
    if isinstance(obj, dict):
        return {k: _to_numpy(v) for k, v in obj.items()}
    return obj


def _to_device(obj, dev):
    if isinstance(obj, torch.Tensor):
        return obj.to(dev)
    if isinstance(obj, dict):
        return {k: _to_device(v, dev) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_device(v, dev) for v in obj)
    return obj
