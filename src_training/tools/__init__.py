"""Developer tools, not used at run time: the ``multirater bench`` benchmark, the naive-sampling
oracle, the LIDC intensity fit and tiny random checkpoints for tests. They sit above the inference
engine (the benchmark drives it), so nothing in the runtime packages imports them."""
