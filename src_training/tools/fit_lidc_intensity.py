"""Re-measure how the LIDC 8-bit slices relate to Hounsfield units.

Each 128x128 uint8 crop of the LIDC slice shards is located in real HU data of the same patient
(the DICOM series ``lidc-ct/LIDC-IDRI-0006/series``: the crop is searched in every slice; the
32x96x96 ``lidc-3d-crops``: each 96x96 slice is searched inside the 128x128 crop) by normalised
cross-correlation (``skimage.feature.match_template``). For every crop found (NCC > 0.999) it fits
``uint8 ~ a * HU + b`` by least squares and checks whether a per-crop min-max rescale
``round(255 * (HU - min) / (max - min))`` reproduces the uint8 values. Run::

    python -m src_training.tools.fit_lidc_intensity

Skips (exit 0) when the shared data folder (``../shared/data``) is absent.
"""

from __future__ import annotations

import sys

import numpy as np

PATIENTS = ("LIDC-IDRI-0006", "LIDC-IDRI-0001", "LIDC-IDRI-0013")
MATCH_NCC = 0.999


def _shard_crops(slices_dir, patients) -> dict:
    """{patient: (images float32 (N,128,128), nodule ids, slice ids, shard name)} from all shards."""
    out = {}
    for f in sorted(slices_dir.glob("train-*.npz")) + [slices_dir / "val.npz"]:
        if not f.exists():
            continue
        with np.load(f, allow_pickle=False) as z:
            pid = z["patient_id"].astype(str)
            sel = np.isin(pid, patients)
            if not sel.any():
                continue
            imgs, nod, sl = z["images"][sel], z["nodule_id"][sel], z["slice_id"][sel]
            for p in np.unique(pid[sel]):
                m = pid[sel] == p
                out[str(p)] = (imgs[m].astype(np.float32), nod[m], sl[m], f.stem)
    return out


def _best_match(big_slices, small, crop_in_big: bool):
    """Highest-NCC placement: (ncc, z, y, x) of ``small`` in ``big_slices[z]`` (crop_in_big) or of
    ``big_slices[z]`` inside ``small`` (a 96x96 volume slice inside a 128x128 crop)."""
    from skimage.feature import match_template

    best = (-2.0, 0, 0, 0)
    for z, s in enumerate(big_slices):
        r = match_template(s, small) if crop_in_big else match_template(small, s)
        y, x = np.unravel_index(int(np.argmax(r)), r.shape)
        if r[y, x] > best[0]:
            best = (float(r[y, x]), z, int(y), int(x))
    return best


def _fit(hu: np.ndarray, u8: np.ndarray, full: bool) -> dict:
    a, b = np.polyfit(hu.ravel(), u8.ravel(), 1)
    row = {
        "a": float(a),
        "b": float(b),
        "hu_at_0": float(-b / a),
        "hu_at_255": float((255 - b) / a),
        "max_abs_resid": float(np.abs(a * hu + b - u8).max()),
        "hu_min": float(hu.min()),
        "hu_max": float(hu.max()),
        "minmax_max_err": None,
        "minmax_exact": None,
    }
    if full:  # the whole 128x128 crop is known: test the per-crop min-max hypothesis
        pred = np.round(255.0 * (hu - hu.min()) / (hu.max() - hu.min()))
        row["minmax_max_err"] = float(np.abs(pred - u8).max())
        row["minmax_exact"] = float(np.mean(pred == u8))
    return row


def measure(data_dir, patients=PATIENTS) -> list[dict]:
    """One row per shard crop of ``patients`` found in the HU data (see module docstring)."""
    from napari_multirater.io import read_image

    crops = _shard_crops(data_dir / "lidc-slices", list(patients))
    rows = []
    for pid, (imgs, nod, sl, shard) in crops.items():
        dicom = data_dir / "lidc-ct" / pid / "series"
        vol_dicom = read_image(dicom)[0].astype(np.float32) if dicom.is_dir() else None
        crop_file = data_dir / "lidc-3d-crops" / f"{pid}_ct_crop.nii.gz"
        vol_crop = read_image(crop_file)[0].astype(np.float32) if crop_file.exists() else None
        for k, u8 in enumerate(imgs):
            row = {
                "patient": pid,
                "shard": shard,
                "nodule": int(nod[k]),
                "slice": int(sl[k]),
                "u8_min": int(u8.min()),
                "u8_max": int(u8.max()),
            }
            found = None
            if vol_dicom is not None:
                ncc, z, y, x = _best_match(vol_dicom, u8, crop_in_big=True)
                if ncc > MATCH_NCC:
                    found = ("dicom", ncc, vol_dicom[z, y : y + u8.shape[0], x : x + u8.shape[1]], u8, True)
            if found is None and vol_crop is not None:
                ncc, z, y, x = _best_match(vol_crop, u8, crop_in_big=False)
                h, w = vol_crop.shape[1:]
                if ncc > MATCH_NCC:
                    found = ("3d-crop", ncc, vol_crop[z], u8[y : y + h, x : x + w], False)
            if found is None:
                rows.append({**row, "source": "not found", "ncc": None})
                continue
            src, ncc, hu, u, full = found
            rows.append({**row, "source": src, "ncc": ncc, **_fit(hu, u, full)})
    return rows


def summarize(rows: list[dict]) -> dict:
    ok = [r for r in rows if r.get("ncc")]
    if not ok:
        return {}
    lo = float(np.median([r["hu_at_0"] for r in ok]))
    hi = float(np.median([r["hu_at_255"] for r in ok]))
    full = [r for r in ok if r["minmax_max_err"] is not None]
    return {
        "crops_matched": len(ok),
        "crops_total": len(rows),
        "median_hu_at_0": lo,
        "median_hu_at_255": hi,
        "a": 255.0 / (hi - lo),
        "b": -255.0 * lo / (hi - lo),
        "a_range": (min(r["a"] for r in ok), max(r["a"] for r in ok)),
        "b_range": (min(r["b"] for r in ok), max(r["b"] for r in ok)),
        "minmax_explains": bool(full) and all(r["minmax_max_err"] <= 1.0 for r in full),
        "minmax_crops": len(full),
        "minmax_exact": float(np.mean([r["minmax_exact"] for r in full])) if full else None,
        "all_span_0_255": all(r["u8_min"] == 0 and r["u8_max"] == 255 for r in rows),
    }


def main(argv=None) -> int:
    from napari_multirater.datasets.shared import shared_data_dir

    d = shared_data_dir()
    if d is None or not (d / "lidc-slices").is_dir():
        print("shared LIDC data not found (../shared/data or $MULTIRATER_SHARED_DATA); nothing to measure")
        return 0
    rows = measure(d)
    print(
        f"{'patient':15} {'shard':8} nod sl {'src':8} {'ncc':>6} {'a':>7} {'b':>7} {'HU@0':>7} {'HU@255':>7} "
        f"{'resid':>5} {'minmax err/exact':>16}"
    )
    for r in rows:
        if not r.get("ncc"):
            print(f"{r['patient']:15} {r['shard']:8} {r['nodule']:3} {r['slice']:2} not found in the HU data")
            continue
        mm = "-" if r["minmax_max_err"] is None else f"{r['minmax_max_err']:.0f} / {100 * r['minmax_exact']:.2f}%"
        print(
            f"{r['patient']:15} {r['shard']:8} {r['nodule']:3} {r['slice']:2} {r['source']:8} {r['ncc']:6.4f} "
            f"{r['a']:7.4f} {r['b']:7.2f} {r['hu_at_0']:7.0f} {r['hu_at_255']:7.0f} {r['max_abs_resid']:5.2f} {mm:>16}"
        )
    s = summarize(rows)
    if s:
        print(
            f"\nmatched {s['crops_matched']}/{s['crops_total']} crops; every crop spans 0..255: {s['all_span_0_255']}; "
            f"per-crop min-max round(255*(HU-min)/(max-min)) reproduces uint8 within 1 level on all "
            f"{s['minmax_crops']} fully known crops: {s['minmax_explains']} "
            f"({100 * (s['minmax_exact'] or 0):.2f}% of pixels identical)"
        )
        print(
            f"per-crop a in [{s['a_range'][0]:.4f}, {s['a_range'][1]:.4f}], b in [{s['b_range'][0]:.1f}, "
            f"{s['b_range'][1]:.1f}]"
        )
        print(
            f"fixed approximation (medians): uint8 = 255 * (HU - {s['median_hu_at_0']:.0f}) / "
            f"({s['median_hu_at_255']:.0f} - {s['median_hu_at_0']:.0f}) = {s['a']:.4f} * HU + {s['b']:.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
