"""Shared fixtures: phantom datasets, the real LIDC data folder (skipped when absent)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MULTIRATER_NOTHREADS", "0")


@pytest.fixture(autouse=True)
def _one_torch_thread_per_parallel_worker():
    """Under pytest-xdist (``make test`` runs one worker per core), each worker computes with one
    torch thread: two workers with two threads each on two cores spin-wait on each other."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _private_config(tmp_path_factory, monkeypatch):
    """Rater identity and emergency copies never go to the user's real config folder."""
    if "NAPARI_MULTIRATER_CONFIG" not in os.environ:
        monkeypatch.setenv("NAPARI_MULTIRATER_CONFIG", str(tmp_path_factory.mktemp("config")))


@pytest.fixture(scope="session")
def shared_data():
    """../shared/data (real LIDC-IDRI); tests using it skip with a clear reason when absent."""
    from napari_multirater.datasets.shared import ENV_VAR, shared_data_dir

    d = shared_data_dir()
    if d is None:
        pytest.skip(f"real LIDC data folder not found (../shared/data or ${ENV_VAR}); skipping real-data test")
    return d


@pytest.fixture(scope="session")
def lidc_fixture(shared_data):
    p = shared_data / "lidc-slices" / "ci-fixture.npz"
    if not p.exists():
        pytest.skip(f"{p} not found; skipping LIDC fixture test")
    return p


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory):
    """A small 2D phantom dataset in the case-folder format (12 cases, 4 raters)."""
    from napari_multirater.datasets.synth import generate_phantom_dataset

    return generate_phantom_dataset(tmp_path_factory.mktemp("phantom2d") / "ds", 12)


def make_annotation_project(root, n_cases: int):
    """An annotation project of ``n_cases`` 2D phantom cases named lung0, lung1, ..."""
    from napari_multirater.annotation import AnnotationStore
    from napari_multirater.datasets.phantom import make_phantom_case

    store = AnnotationStore.create_project(root, "phantoms", intensity_window=(-1000, 400))
    for k in range(n_cases):
        case = make_phantom_case(k, seed=3, ndim=2)
        store.add_case(case.image, case.geometry, f"lung{k}")
    return store


@pytest.fixture
def collect_dock(make_napari_viewer):
    """Factory for the repeated Collect-annotations setup: ``collect_dock(project, rater, viewer=None)``
    returns ``(viewer, dock)``: the dock added to ``viewer`` (a new one by default), the rater id
    set (when given) and the project opened (when given), as a rater does it."""

    def make(project=None, rater: str | None = None, viewer=None):
        viewer = viewer if viewer is not None else make_napari_viewer()
        _, dock = viewer.window.add_plugin_dock_widget("napari-multirater", "Collect annotations")
        if rater is not None:
            dock.rater_edit.setText(rater)
            dock.rater_btn.click()
        if project is not None:
            dock.open_project(project.root)
        return viewer, dock

    return make
