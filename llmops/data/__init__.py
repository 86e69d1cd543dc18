"""Datasets: the record schema and JSONL io, the stdlib sample corpus, splits, GX validation, DVC.

Modules: `records` (schema, strict reader, deterministic writer), `build` (sample corpus from the
standard library), `split` (hash-of-prompt splits), `validate` (Great Expectations suites from
data/expectations/), `dvc` (the DVC command line with the project's environment), `text` (shared
normalisation and ids). Heavy libraries (pandas, GX, tokenizers) are imported inside functions.
"""
