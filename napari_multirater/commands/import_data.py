"""``multirater import lidc|folder``: bring existing multi-rater data into the case-folder format."""

from __future__ import annotations

import math
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "import",
        help="import LIDC readings or a multi-rater folder (per-rater, QUBIQ, nnU-Net) as a case-folder dataset",
    )
    kinds = p.add_subparsers(dest="import_kind", metavar="KIND", required=True)
    lidc = kinds.add_parser("lidc", help="an LIDC-IDRI DICOM series and its reader XML: one rater per reading session")
    lidc.add_argument(
        "--dicom", required=True, help="the DICOM series folder (or, without --xml, the patient folder to search)"
    )
    lidc.add_argument("--xml", help="the LIDC reader XML (default: the one found in or below --dicom)")
    lidc.add_argument("--out", required=True, help="new dataset folder (must not exist or be empty)")
    lidc.add_argument(
        "--crop-mm",
        type=float,
        help="one case per nodule: a box of this size (mm) around it (default: the whole series)",
    )
    lidc.add_argument(
        "--include-contour",
        action="store_true",
        help="count the outline pixels as nodule (the rule of version 0.2.0 and of the shared lidc-3d-crops); "
        "default: the LIDC convention, the outline is the first voxel outside the nodule (as pylidc)",
    )
    lidc.add_argument("--name", help="dataset name (default: the --out folder name)")
    lidc.set_defaults(func=run_lidc)
    folder = kinds.add_parser("folder", help="a folder in a common multi-rater layout")
    folder.add_argument("path", help="the folder to import")
    folder.add_argument(
        "--layout",
        choices=["auto", "per-rater", "qubiq", "nnunet"],
        default="auto",
        help="auto (default) detects it and says what it found",
    )
    folder.add_argument("--out", required=True, help="new dataset folder (must not exist or be empty)")
    folder.add_argument("--task", type=int, help="QUBIQ task number where a folder holds several (task01 = 1)")
    folder.add_argument(
        "--modality",
        help="modality for dataset.json, e.g. CT (sets the default intensity "
        "window; default: from an nnU-Net dataset.json, else unknown)",
    )
    folder.add_argument("--name", help="dataset name (default: the --out folder name)")
    folder.add_argument(
        "--skip-bad",
        action="store_true",
        help="import the usable files and list the others (default: any problem imports nothing)",
    )
    folder.set_defaults(func=run_folder)
    bubil = kinds.add_parser(
        "bu-bil", help="a BU-BIL dataset folder (named experts who keep their identity; a second tool as repeats)"
    )
    bubil.add_argument(
        "path", help="the dataset folder, e.g. BU-BIL_Dataset1 (holding RawImages/ and ExpertsAnnotations/)"
    )
    bubil.add_argument("--out", required=True, help="new dataset folder (must not exist or be empty)")
    bubil.add_argument(
        "--tool", help="annotation tool whose masks are the experts' annotations (default: the first all used)"
    )
    bubil.add_argument(
        "--repeat-tool", help="tool whose masks are stored as intra-rater repeats (default: the next one)"
    )
    bubil.add_argument("--subset", help="annotation subset where the dataset has several (BU-BIL_Dataset2: 2A or 2B)")
    bubil.add_argument("--name", help="dataset name (default: the --out folder name)")
    bubil.set_defaults(func=run_bubil)


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def run_lidc(args) -> int:
    from ..datasets.case import DatasetError
    from ..datasets.case_folder import create_dataset, new_manifest
    from ..datasets.lidc_folder import crop_nodules, find_lidc_all, is_lidc_xml, load_lidc_case
    from ..datasets.staging import staged_folder, write_imported_case
    from ..io.medical import MedicalIOError, is_dicom_dir

    if args.crop_mm is not None and not (math.isfinite(args.crop_mm) and args.crop_mm > 0):
        return _fail(f"--crop-mm must be a positive size in mm, got {args.crop_mm}")
    dicom = Path(args.dicom).expanduser()
    if not dicom.exists():
        return _fail(f"{dicom} does not exist")
    if args.xml:
        xml = Path(args.xml).expanduser()
        if not is_lidc_xml(xml):
            return _fail(f"{xml}: not an LIDC reader XML (no LidcReadMessage)")
        if not is_dicom_dir(dicom):
            return _fail(f"{dicom}: no DICOM series in this folder")
    else:
        found = find_lidc_all(dicom)
        if len(found) != 1:
            what = (
                "no LIDC reader XML with its series"
                if not found
                else f"{len(found)} readings ({', '.join(str(x) for x, _ in found[:4])})"
            )
            return _fail(f"{dicom}: {what} found; pass --xml FILE and the series folder as --dicom")
        xml, dicom = found[0]
    try:
        case, info = load_lidc_case(xml, dicom, include_contour=args.include_contour)
        cases, notes = crop_nodules(case, args.crop_mm) if args.crop_mm is not None else ([case], [])
        if not cases:
            return _fail(f"{xml}: no nodule outline on this series to crop around; import without --crop-mm")
        readers = list(case.rater_names)
        with staged_folder(args.out) as tmp:
            manifest = new_manifest(
                args.name or Path(args.out).name,
                readers,
                modality="CT",
                intensity_window=[-1000.0, 400.0],
                description=f"LIDC-IDRI reading {xml.name} on series {info.get('series_uid')}",
            )
            create_dataset(tmp, manifest)
            for c in cases:
                prov = {
                    r: {
                        "kind": "imported",
                        "source": "LIDC-IDRI reader XML",
                        "xml": str(xml),
                        "reading_session": k + 1,
                        "reader_id": case.meta["reader_ids"][r],
                        "series_uid": info.get("series_uid"),
                        "outline_rule": info["outline_rule"],
                    }
                    for k, r in enumerate(readers)
                }
                write_imported_case(tmp, c, prov)
    except (DatasetError, MedicalIOError) as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"cannot write {args.out}: {e}")
    if info.get("warning"):
        print(f"warning: {info['warning']}", file=sys.stderr)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    what = (
        f"{len(cases)} nodule crops of {args.crop_mm:g} mm" if args.crop_mm is not None else "1 case (the whole series)"
    )
    ids = ", ".join(f"{r}={case.meta['reader_ids'][r]}" for r in readers)
    small = len(info.get("small_nodule_points") or [])
    print(
        f"imported {case.case_id} into {args.out}: {what}; {len(readers)} readers ({ids}); "
        f"nodules >= 3 mm per reader {info['nodule_counts']}; {small} small nodules (< 3 mm, points) not "
        f"rasterised; {info['skipped_rois']} contours on slices outside the series skipped; outline: "
        f"{info['outline_rule']}"
    )
    return 0


def run_folder(args) -> int:
    from ..datasets.case import DatasetError
    from ..datasets.import_layouts import ImportProblems, import_scan, scan_folder
    from ..io.medical import MedicalIOError

    try:
        scan = scan_folder(Path(args.path).expanduser(), args.layout, args.task)
        print(f"found {scan.describe()}" + (f" ({', '.join(scan.notes)})" if scan.notes else ""))
        summary = import_scan(
            scan, Path(args.out).expanduser(), name=args.name, modality=args.modality, skip_bad=args.skip_bad
        )
    except ImportProblems as e:
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        return _fail(
            f"{len(e.problems)} problem(s) listed above; nothing imported (fix them, or --skip-bad to import the rest)"
        )
    except (DatasetError, MedicalIOError) as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"cannot write {args.out}: {e}")
    for problem in summary["skipped"]:
        print(f"  skipped: {problem}", file=sys.stderr)
    print(
        f"imported {summary['cases']} cases with raters {', '.join(summary['raters'])} into {summary['out']} "
        f"({summary['missing_masks']} missing rater masks, {len(summary['skipped'])} files skipped)"
    )
    return 0


def run_bubil(args) -> int:
    from ..datasets.case import DatasetError
    from ..datasets.import_bubil import import_bubil, scan_bubil
    from ..datasets.import_layouts import ImportProblems

    try:
        scan = scan_bubil(
            Path(args.path).expanduser(), tool=args.tool, repeat_tool=args.repeat_tool, subset=args.subset
        )
        print(f"found {scan.describe()}")
        summary = import_bubil(scan, Path(args.out).expanduser(), name=args.name)
    except ImportProblems as e:
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        return _fail(f"{len(e.problems)} problem(s) listed above; nothing imported")
    except DatasetError as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"cannot write {args.out}: {e}")
    print(
        f"imported {summary['cases']} images with experts {', '.join(summary['raters'])} into {summary['out']} "
        f"(annotations: {summary['tool']}; {summary['repeats']} repeats from {summary['repeat_tool']}; "
        f"{summary['missing_masks']} missing expert masks)"
    )
    return 0
