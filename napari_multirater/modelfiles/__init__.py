"""Model files, Qt- and torch-free: where checkpoints are found by name (:mod:`.registry`) and how a
model card maps image intensities to the model input (:mod:`.intensity`). Shared by the training
side (model cards, evaluation) and the inference engine."""
