"""The train layer: the loop, optimisation, precision, devices, checkpoints, history."""

from cnnlab.train.config import OPTIMIZERS, SCHEDULES, TrainConfig
from cnnlab.train.tasks import (
    BinaryTask,
    ClassificationTask,
    SigmoidClassificationTask,
    Task,
    default_task,
)
from cnnlab.train.trainer import (
    CHECKPOINT_NAME,
    HISTORY_COLUMNS,
    Callback,
    NonFiniteError,
    RunResult,
    Trainer,
    evaluate,
    load_checkpoint_file,
    predict_logits,
    prepare_inputs,
)

__all__ = [
    "OPTIMIZERS", "SCHEDULES", "TrainConfig", "BinaryTask", "ClassificationTask",
    "SigmoidClassificationTask", "Task", "default_task", "CHECKPOINT_NAME", "HISTORY_COLUMNS",
    "Callback", "NonFiniteError", "RunResult", "Trainer", "evaluate", "load_checkpoint_file",
    "predict_logits", "prepare_inputs",
]
