"""Inference defaults shared by the engine, the predict CLI and the plugin (import-light: no torch)."""

DEFAULT_SAMPLES = 16  # the one default number of diverse samples (engine, predict CLI, dock, uncertainty maps)
