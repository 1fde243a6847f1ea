"""Moved: module A's runtimes live in :mod:`edgelearn.runtime`, a classifier's export in
:mod:`edgelearn.inspection.export`, the variants' comparison in :mod:`edgelearn.evaluation.variants`.
Kept only until the CLI imports from there; delete it then."""
