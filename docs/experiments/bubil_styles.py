"""Per-rater style of a BU-BIL import: area relative to the case's mean rater area, and how often
each rater draws the largest / smallest outline (cases where all raters are present).

    multirater import bu-bil BU-BIL_Dataset1 --out ds1
    multirater raters --data ds1 --out ds1_report
    python docs/experiments/bubil_styles.py ds1_report/raters_per_case.csv
"""

import csv
import sys
from collections import defaultdict

import numpy as np

rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["valid"] == "True"]
by_case = defaultdict(dict)
for r in rows:
    by_case[r["case_id"]][r["rater"]] = float(r["volume_mm3"])
raters = sorted({r["rater"] for r in rows})
full = {c: v for c, v in by_case.items() if len(v) == len(raters)}
rel = defaultdict(list)
largest, smallest = defaultdict(int), defaultdict(int)
for v in full.values():
    mean = np.mean(list(v.values()))
    for r, a in v.items():
        rel[r].append(a / mean)
    largest[max(v, key=v.get)] += 1
    smallest[min(v, key=v.get)] += 1
print(f"{len(full)} cases with all {len(raters)} raters")
print("| rater | area / mean rater area | std | largest | smallest |")
print("|---|---|---|---|---|")
for r in raters:
    a = np.array(rel[r])
    print(
        f"| {r} | {a.mean():.3f} | {a.std(ddof=1):.3f} | {largest[r] / len(full):.0%} | {smallest[r] / len(full):.0%} |"
    )
