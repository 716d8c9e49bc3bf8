"""``cnnlab train --task ...`` and ``cnnlab evaluate`` for tasks other than image classification."""

from __future__ import annotations

from cnnlab._util import CnnlabError


def run_task(args) -> int:
    raise CnnlabError(f"--task {args.task} is not available in this version of the CLI")


def evaluate_task(args, task: str) -> int:
    raise CnnlabError(f"evaluating {task} runs is not available in this version of the CLI")
