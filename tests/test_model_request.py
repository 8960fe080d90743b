"""Typed requests from the Model dock (no Qt): kinds, scopes, one default number of samples."""

from __future__ import annotations

import pytest

from napari_multirater._napari.model_controller import ModelController
from napari_multirater._napari.model_request import DEFAULT_SAMPLES, RunKind, RunRequest, Scope


def test_request_defaults_and_plain_strings():
    r = RunRequest("samples")
    assert r.kind is RunKind.SAMPLES and r.scope is Scope.WHOLE_IMAGE and r.n_samples == DEFAULT_SAMPLES
    assert RunRequest("uncertainty", "current slice").scope is Scope.CURRENT_SLICE
    assert RunKind("personas") == "personas"  # str enums: the dock's texts and scripts' strings


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_samples": 0}, "at least 1"),
        ({"kind": "sample"}, "unknown kind 'sample'"),
        ({"scope": "everything"}, "unknown scope 'everything'"),
        ({"batch_slices": 0}, "at least 1"),
    ],
)
def test_bad_requests_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RunRequest(**{"kind": "samples", **kwargs})


def test_each_kind_asks_the_engine_only_for_what_it_shows():
    out = ModelController.output_kwargs
    assert out(RunRequest("samples", n_samples=5)) == {"samples": 5}
    assert out(RunRequest("personas", n_samples=5)) == {"samples": 0, "personas": True}
    # uncertainty maps from n samples, but no binary samples are kept for nobody to see
    assert out(RunRequest("uncertainty", n_samples=5)) == {"samples": 0, "uncertainty": True, "uncertainty_samples": 5}
