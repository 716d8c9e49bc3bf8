"""The runs layer: one training run from a spec to a finished, self-explaining run directory.

It sits above data, augment, models, train, diagnose and report, and below
lab and cli: it loads the data, builds the model and augmentation, trains,
evaluates on the test split, judges the fit and writes the figures.
"""

from cnnlab.runs.image import RunSpec, evaluate_run, load_run_model, train_run

__all__ = ["RunSpec", "evaluate_run", "load_run_model", "train_run"]
