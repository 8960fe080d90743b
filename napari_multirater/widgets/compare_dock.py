""" "Compare raters" dock: agreement, consensus and style of the rater layers in the viewer.

A thin view over :class:`~napari_multirater._napari.compare_controller.CompareController`: it
gathers options, starts the comparison as a job and shows the tables and a pairwise-Dice
heatmap. Every button calls a plain method (``compute``, ``cancel``, ``run_dataset_report``).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from .._napari.compare_controller import CompareController, CompareResult
from ..analysis.dataset_report import default_report_dir
from ..analysis.lesions import lesion_table
from ..analysis.report import STYLE_COLUMNS as REPORT_STYLE_COLUMNS
from ..analysis.report import format_value, pairwise_heatmap_figure

__all__ = ["CompareDock"]

PAIRWISE_METRICS = (
    ("Dice", "dice", ".3f"),
    ("IoU", "iou", ".3f"),
    ("ASSD (mm)", "assd_mm", ".2f"),
    ("HD95 (mm)", "hd95_mm", ".2f"),
    ("HD (mm)", "hausdorff_mm", ".2f"),
)
CONSENSUS_METHODS = (("STAPLE", "staple"), ("majority vote", "majority"))
STYLE_COLUMNS = (("Rater", "rater", None),) + tuple((title, key, fmt) for key, title, fmt in REPORT_STYLE_COLUMNS)
HEATMAP_HEIGHT = 290


READY_TEXT = "Select at least two rater layers and press Compute."


def fill_table(
    table: QTableWidget, header: list[str], rows: list[list[str]], row_labels: list[str] | None = None
) -> None:
    """Replace a table's content (read-only cells, numbers right-aligned)."""
    table.clear()
    table.setColumnCount(len(header))
    table.setRowCount(len(rows))
    table.setHorizontalHeaderLabels(header)
    if row_labels is not None:
        table.setVerticalHeaderLabels(row_labels)
    for i, row in enumerate(rows):
        for j, text in enumerate(row):
            item = QTableWidgetItem(text)
            item.setFlags(Qt.ItemIsSelectable | Qt.ItemIsEnabled)
            if j > 0 or row_labels is not None:
                item.setTextAlignment(int(Qt.AlignRight | Qt.AlignVCenter))
            table.setItem(i, j, item)
    table.resizeColumnsToContents()


def _table() -> QTableWidget:
    t = QTableWidget()
    t.setEditTriggers(QAbstractItemView.NoEditTriggers)
    t.verticalHeader().setDefaultSectionSize(22)
    t.horizontalHeader().setSectionResizeMode(QHeaderView.Interactive)
    return t


class CompareDock(QWidget):
    """Dock widget: choose Labels layers, compute agreement/consensus/style, show the results."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.controller = CompareController(napari_viewer)
        self.result: CompareResult | None = None
        self.report = None
        self._checked: dict[str, bool] = {}
        self._build()
        self._connect_viewer()
        self.refresh_layers()

    # --- layout ----------------------------------------------------------------------------------
    def _build(self) -> None:
        from ._docking import scrolling_body

        lay = QVBoxLayout(scrolling_body(self))
        lay.setContentsMargins(6, 6, 6, 6)
        lay.setSpacing(4)
        self.hint = QLabel("")
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet("color: #ffb454")
        self.hint.setVisible(False)
        lay.addWidget(self.hint)
        head = QHBoxLayout()
        head.addWidget(QLabel("Labels layers to compare (raters on the image's grid preselected):"), 1)
        self.all_btn = QPushButton("All")
        self.all_btn.setToolTip("check every Labels layer in the list")
        self.all_btn.clicked.connect(lambda: self.set_selected(self._names()))
        self.none_btn = QPushButton("None")
        self.none_btn.clicked.connect(lambda: self.set_selected([]))
        head.addWidget(self.all_btn)
        head.addWidget(self.none_btn)
        lay.addLayout(head)
        self.layer_list = QListWidget()
        self.layer_list.setMaximumHeight(104)
        self.layer_list.itemChanged.connect(self._item_changed)
        lay.addWidget(self.layer_list)

        opts = QHBoxLayout()
        self.distances = QCheckBox("Surface distances")
        self.distances.setChecked(True)
        self.distances.setToolTip("ASSD, HD95 and Hausdorff distance (mm) per pair (slower on large volumes)")
        opts.addWidget(self.distances)
        opts.addWidget(QLabel("Style reference:"))
        self.consensus = QComboBox()
        for label, key in CONSENSUS_METHODS:
            self.consensus.addItem(label, key)
        self.consensus.setToolTip("Leave-one-out consensus each rater is compared with in the style table")
        opts.addWidget(self.consensus, 1)
        lay.addLayout(opts)

        buttons = QHBoxLayout()
        self.compute_btn = QPushButton("Compute")
        self.compute_btn.clicked.connect(lambda: self.compute())
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        self.report_btn = QPushButton("Dataset report…")
        self.report_btn.setToolTip("Rater-style report (CSV, markdown, plots) of a case-folder dataset")
        self.report_btn.clicked.connect(self._choose_dataset)
        from ._help import help_button

        self.help_btn = help_button(self, "Compare raters")
        for b in (self.compute_btn, self.cancel_btn, self.report_btn, self.help_btn):
            buttons.addWidget(b)
        lay.addLayout(buttons)

        self.status = QLabel(READY_TEXT)
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        lay.addWidget(self.status)

        self.figure = Figure(figsize=(4, 3), dpi=100)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self._canvas_box = QVBoxLayout()
        self._canvas_box.setContentsMargins(0, 0, 0, 0)
        self._canvas_box.addWidget(self.canvas)
        lay.addLayout(self._canvas_box)
        self._set_canvas_policy(self.canvas)
        self._placeholder_figure()

        self.tabs = QTabWidget()
        pw = QWidget()
        pw_lay = QVBoxLayout(pw)
        pw_lay.setContentsMargins(2, 2, 2, 2)
        row = QHBoxLayout()
        row.addWidget(QLabel("Metric:"))
        self.metric = QComboBox()
        for label, key, _ in PAIRWISE_METRICS:
            self.metric.addItem(label, key)
        self.metric.currentIndexChanged.connect(self._show_pairwise)
        row.addWidget(self.metric, 1)
        pw_lay.addLayout(row)
        self.pairwise_table = _table()
        pw_lay.addWidget(self.pairwise_table)
        self.tabs.addTab(pw, "Pairwise")
        self.staple_table = _table()
        self.tabs.addTab(self.staple_table, "STAPLE")
        self.style_table = _table()
        self.tabs.addTab(self.style_table, "Rater style")
        lesion_tab = QWidget()  # per-lesion comparison: detection agreement + one row per lesion and rater
        lesion_lay = QVBoxLayout(lesion_tab)
        lesion_lay.setContentsMargins(2, 2, 2, 2)
        self.detection_label = QLabel("")
        self.detection_label.setWordWrap(True)
        lesion_lay.addWidget(self.detection_label)
        self.lesion_table = _table()
        lesion_lay.addWidget(self.lesion_table)
        self.tabs.addTab(lesion_tab, "Lesions")
        self.model_table = _table()
        self.model_tab_index = self.tabs.addTab(self.model_table, "Model vs raters")
        self.tabs.setTabEnabled(self.model_tab_index, False)
        self.self_label = QLabel("")  # intra-rater repeats (dataset report of an annotation project)
        self.self_label.setTextFormat(Qt.MarkdownText)
        self.self_label.setWordWrap(True)
        self.self_tab_index = self.tabs.addTab(self.self_label, "Self-agreement")
        self.tabs.setTabEnabled(self.self_tab_index, False)
        self.tabs.setMinimumHeight(170)
        lay.addWidget(self.tabs, 1)

    def _set_canvas_policy(self, canvas) -> None:
        canvas.setMinimumHeight(HEATMAP_HEIGHT)
        canvas.setMaximumHeight(HEATMAP_HEIGHT + 60)
        canvas.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)

    def _placeholder_figure(self) -> None:
        self.figure.clear()
        ax = self.figure.add_subplot(111)
        ax.axis("off")
        ax.text(
            0.5,
            0.5,
            "Pairwise Dice heatmap\nappears here after Compute",
            ha="center",
            va="center",
            color="gray",
            fontsize=10,
            transform=ax.transAxes,
        )
        self.canvas.draw_idle()

    def _show_figure(self, fig: Figure) -> None:
        """Swap in a new canvas for ``fig`` (figures come from the Agg-only analysis library)."""
        fig.set_layout_engine("tight")
        fig.patch.set_facecolor("white")
        canvas = FigureCanvasQTAgg(fig)
        self._set_canvas_policy(canvas)
        self._canvas_box.replaceWidget(self.canvas, canvas)
        self.canvas.setParent(None)
        self.canvas.deleteLater()
        self.canvas, self.figure = canvas, fig
        canvas.draw_idle()

    # --- layer list ------------------------------------------------------------------------------
    def showEvent(self, event) -> None:
        from ._docking import settle_dock

        settle_dock(self, "Compare raters")
        super().showEvent(event)

    def _connect_viewer(self) -> None:
        ev = self.viewer.layers.events
        for name in ("inserted", "removed", "moved"):
            getattr(ev, name).connect(self._on_layers_changed)

    def _on_layers_changed(self, event=None) -> None:
        try:
            self.refresh_layers()
        except RuntimeError:  # widget already deleted while the viewer closes
            pass

    def _names(self) -> list[str]:
        return [self.layer_list.item(i).text() for i in range(self.layer_list.count())]

    def _advise(self) -> None:
        """Top hint: no image / no Labels layers to compare / an image without physical spacing."""
        from .._napari import guidance

        images = [ly for ly in self.viewer.layers if guidance.is_source_image(ly)]
        parts = []
        if not images:
            parts.append(guidance.missing_image_hint(self.viewer))
        elif self.layer_list.count() < 2:
            parts.append(
                "Open at least two rater masks (Labels layers on the image's grid): a case folder, "
                "an LIDC reading (File > Open the XML) or File > Open Sample > Multi-rater phantom."
            )
        parts += [w for w in (guidance.spacing_warning(ly) for ly in images) if w]
        self.hint.setText("\n\n".join(parts))
        self.hint.setVisible(bool(parts))

    def refresh_layers(self) -> None:
        """List the candidate Labels layers; rater layers are checked unless the user unchecked them.
        A status line about other inputs is reset when the list changes."""
        before = self._names()
        default = {ly.name for ly in self.controller.default_layers()}
        self.layer_list.blockSignals(True)
        self.layer_list.clear()
        for ly in self.controller.candidate_layers():
            item = QListWidgetItem(ly.name)
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            checked = self._checked.get(ly.name, ly.name in default)
            item.setCheckState(Qt.Checked if checked else Qt.Unchecked)
            self.layer_list.addItem(item)
        self.layer_list.blockSignals(False)
        if self._names() != before and not self.controller.jobs.busy:
            self.status.setText(READY_TEXT)
        self._advise()

    def _item_changed(self, item: QListWidgetItem) -> None:
        self._checked[item.text()] = item.checkState() == Qt.Checked

    def selected_layers(self) -> list:
        names = [
            self.layer_list.item(i).text()
            for i in range(self.layer_list.count())
            if self.layer_list.item(i).checkState() == Qt.Checked
        ]
        return [self.viewer.layers[n] for n in names if n in self.viewer.layers]

    def set_selected(self, names) -> None:
        """Check exactly the layers named in ``names`` (tests, scripts)."""
        names = set(names)
        for i in range(self.layer_list.count()):
            item = self.layer_list.item(i)
            item.setCheckState(Qt.Checked if item.text() in names else Qt.Unchecked)

    # --- compute ---------------------------------------------------------------------------------
    def compute(self, sync: bool | None = None) -> None:
        """Compare the checked layers as a job (``sync``: on this thread); results land in the tables."""
        layers = self.selected_layers()
        try:
            self._set_running(True, f"Comparing {len(layers)} layers…")
            self.controller.start(
                layers,
                self.distances.isChecked(),
                self.consensus.currentData(),
                on_done=self._show_result,
                on_error=self._on_error,
                on_cancelled=self._on_cancelled,
                on_finished=self._on_finished,
                sync=sync,
            )
        except (ValueError, RuntimeError) as e:
            self._set_running(self.controller.jobs.busy, str(e))

    def cancel(self) -> None:
        if self.controller.jobs.busy:
            self.controller.cancel()
            self.status.setText("Cancelling…")

    def _set_running(self, running: bool, message: str = "") -> None:
        self.compute_btn.setEnabled(not running)
        self.report_btn.setEnabled(not running)
        self.cancel_btn.setEnabled(running)
        if message:
            self.status.setText(message)

    def _on_error(self, exc) -> None:
        from napari.utils.notifications import show_error

        self.status.setText(f"Failed: {exc}")
        show_error(f"Compare raters failed: {exc}")

    def _on_cancelled(self) -> None:
        self.status.setText("Cancelled.")

    def _on_finished(self) -> None:
        self._set_running(self.controller.jobs.busy)

    # --- results ---------------------------------------------------------------------------------
    def _show_result(self, result: CompareResult) -> None:
        self.result = result
        self._show_pairwise()
        names = result.names
        fill_table(
            self.staple_table,
            ["Rater", "Sensitivity", "Specificity"],
            [
                [
                    n,
                    format_value(result.staple.sensitivity[i], ".3f"),
                    format_value(result.staple.specificity[i], ".3f"),
                ]
                for i, n in enumerate(names)
            ],
        )
        self._fill_style(result.style_rows)
        self._fill_lesions(result)
        if result.model_rows:
            outputs = list(result.model_rows[0]["dice"])
            fill_table(
                self.model_table,
                ["Rater", "Best model output", "Dice", "Runner-up", "Margin"],
                [
                    [
                        r["rater"],
                        r["best_output"] or "–",
                        format_value(r["best_dice"], ".3f"),
                        f"{r['runner_up']} ({format_value(r['runner_up_dice'], '.3f')})" if r["runner_up"] else "–",
                        format_value(r["margin"], "+.3f"),
                    ]
                    for r in result.model_rows
                ],
            )
            self.model_table.setToolTip("Model outputs compared: " + ", ".join(outputs))
        else:
            fill_table(self.model_table, ["Rater", "Best model output", "Dice"], [])
        self.tabs.setTabEnabled(self.model_tab_index, bool(result.model_rows))
        fig = pairwise_heatmap_figure(result.pairwise["dice"], names, "Pairwise Dice")
        self._show_figure(fig)
        parts = [f"Compared {len(names)} raters: {', '.join(names)}."]
        parts += [m[0].upper() + m[1:] + "." for m in result.messages]
        if result.model_rows:
            parts.append(f"{len(result.model_rows[0]['dice'])} model output layer(s) matched to the raters.")
        self.status.setText(" ".join(parts))

    def _fill_lesions(self, result: CompareResult) -> None:
        les = result.lesions
        rows = les.rows if les is not None else []
        fill_table(self.lesion_table, *lesion_table(rows))
        if les is None or not les.findings:
            self.detection_label.setText("No lesion in the compared masks.")
            return
        found = ", ".join(f"{k}: {n}" for k, n in les.detection.items() if n)
        self.detection_label.setText(
            f"{len(les.findings)} lesions (3D connected, matched across raters by overlap or centroids "
            f"<= {les.match_distance_mm:g} mm). Found by k/n raters: {found}. Per lesion, each rater vs the "
            "other raters who found it."
        )

    def _fill_style(self, rows: list[dict]) -> None:
        fill_table(
            self.style_table,
            [c[0] for c in STYLE_COLUMNS],
            [
                [
                    format_value(r.get(key), fmt) if r.get("valid", True) or fmt is None else "missing"
                    for _, key, fmt in STYLE_COLUMNS
                ]
                for r in rows
            ],
        )

    def _show_pairwise(self, *_) -> None:
        if self.result is None:
            return
        key = self.metric.currentData()
        fmt = next(f for _, k, f in PAIRWISE_METRICS if k == key)
        m = self.result.pairwise[key]
        names = self.result.names
        fill_table(self.pairwise_table, names, [[format_value(v, fmt) for v in row] for row in m], row_labels=names)

    # --- dataset report --------------------------------------------------------------------------
    def _choose_dataset(self) -> None:
        """Two folder dialogs: the dataset, then where the report goes (never into the dataset)."""
        folder = QFileDialog.getExistingDirectory(self, "Case-folder dataset (folder with dataset.json)")
        if not folder:
            return
        out = self.choose_report_dir(folder)
        if out:
            self.run_dataset_report(folder, out)

    def choose_report_dir(self, dataset_dir) -> str:
        """Ask for the report folder, starting at :func:`default_report_dir` (or its nearest
        existing parent); a folder inside the dataset is refused. '' when cancelled."""
        suggestion = default_report_dir(dataset_dir)
        start = next((p for p in (suggestion, *suggestion.parents) if p.is_dir()), Path.home())
        out = QFileDialog.getExistingDirectory(self, "Folder for the rater report (outside the dataset)", str(start))
        if out:
            ds = Path(dataset_dir).resolve()
            if Path(out).resolve() == ds or ds in Path(out).resolve().parents:
                self.status.setText(
                    f"Choose a report folder outside the dataset {ds} (it may be shared, read-only data)."
                )
                return ""
        return out

    def run_dataset_report(self, dataset_dir, out_dir=None, sync: bool | None = None) -> None:
        """Rater-style report of a dataset folder as a job, written to ``out_dir`` (default
        :func:`default_report_dir`, outside the dataset); the heatmap then shows the dataset's
        mean pairwise Dice. Broken cases/rater files are skipped and listed."""

        def failed(exc):
            from napari.utils.notifications import show_error

            self.status.setText(f"Dataset report failed: {exc}")
            show_error(f"Dataset report failed: {exc}")

        try:
            self._set_running(True, f"Dataset report of {dataset_dir}…")
            self.controller.start_report(
                dataset_dir,
                out_dir,
                self.consensus.currentData(),
                on_done=self._show_report,
                on_error=failed,
                on_cancelled=self._on_cancelled,
                on_finished=self._on_finished,
                sync=sync,
            )
        except (ValueError, OSError, RuntimeError) as e:
            self._set_running(self.controller.jobs.busy, f"Dataset report failed: {e}")

    def _show_report(self, outcome) -> None:
        report, paths, problems = outcome
        self.report = report
        rows = []
        for name in report.rater_names:
            s = report.summary[name]
            rows.append(
                {
                    "rater": f"{name} (n={s['n_cases']})",
                    "valid": True,
                    **{key: s.get(f"{key}_mean", float("nan")) for _, key, fmt in STYLE_COLUMNS if fmt},
                }
            )
        self._fill_style(rows)
        self._show_figure(
            pairwise_heatmap_figure(
                report.pairwise_dice, report.rater_names, f"Mean pairwise Dice ({report.n_cases} cases)"
            )
        )
        md = paths.get("self_agreement_md")
        self.self_label.setText(md.read_text(encoding="utf-8").split("\n", 2)[-1] if md else "")
        self.tabs.setTabEnabled(self.self_tab_index, bool(md))
        msg = f"Dataset report of {report.n_cases} cases written to {paths['raters_md'].parent}"
        if problems:
            more = f" (+{len(problems) - 3} more, see the report)" if len(problems) > 3 else ""
            msg += f"; {len(problems)} problem(s): " + "; ".join(problems[:3]) + more
        self.status.setText(msg + ".")
        self.tabs.setCurrentWidget(self.style_table)
