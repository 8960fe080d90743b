"""Annotation collection: a crash/concurrency-safe store over case-folder projects, the rater
identity and the per-case session state (pure Python, no Qt/napari)."""

from .lock import FileLock, LockTimeout
from .session import AnnotationSession
from .store import AnnotationStore, ChecksumMismatch, RaterIdentity, case_id_from_path, config_path

__all__ = [
    "AnnotationSession",
    "AnnotationStore",
    "ChecksumMismatch",
    "FileLock",
    "LockTimeout",
    "RaterIdentity",
    "case_id_from_path",
    "config_path",
]
