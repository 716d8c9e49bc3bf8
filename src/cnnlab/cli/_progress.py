"""Terminal output for training: a live bar per epoch and one fixed-column line per epoch.

These callbacks belong to the CLI because only the CLI writes to the terminal;
the library reports through callbacks and logging.
"""

from __future__ import annotations

import json
import sys
import time

from cnnlab.train import Callback

HEADER = (f"{'epoch':>5} {'train_loss':>10} {'train_acc':>9} {'fit_acc':>7} {'val_loss':>8} "
          f"{'val_acc':>7} {'lr':>9} {'seconds':>7} {'images/s':>8}")


def format_epoch(row: dict) -> str:
    def number(key: str, width: int, digits: int) -> str:
        value = row.get(key)
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    return (f"{row['epoch']:>5d} {number('train_loss', 10, 4)} {number('train_accuracy', 9, 4)} "
            f"{number('fit_accuracy', 7, 4)} {number('val_loss', 8, 4)} "
            f"{number('val_accuracy', 7, 4)} {row['lr']:>9.2e} {number('seconds', 7, 1)} "
            f"{number('images_per_second', 8, 0)}")


class ConsoleProgress(Callback):
    """A rich progress bar within each epoch (loss, accuracy, images/s, ETA) and epoch lines."""

    def __init__(self, show_bar: bool = True) -> None:
        from rich.console import Console

        self.console = Console(stderr=False, highlight=False)
        self.show_bar = show_bar and self.console.is_terminal
        self.progress = None

    def on_fit_start(self, trainer) -> None:
        self.console.print(HEADER)

    def on_epoch_start(self, trainer, epoch) -> None:
        if not self.show_bar:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeRemainingColumn)

        self.progress = Progress(TextColumn(f"epoch {epoch}/{trainer.config.epochs}"),
                                 BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                                 console=self.console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task("train", total=trainer.steps_per_epoch, status="")
        self.started = time.perf_counter()
        self.images = 0

    def on_step_end(self, trainer, step, loss) -> None:
        if self.progress is None:
            return
        self.images += trainer.config.batch_size
        # Reading the loss synchronises with the device; do it only every 20 steps.
        if step % 20 == 0:
            speed = self.images / max(1e-9, time.perf_counter() - self.started)
            status = f"loss {loss.item():.3f}  {speed:,.0f} img/s"
            self.progress.update(self.task, advance=20, status=status)

    def on_epoch_end(self, trainer, epoch, row) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        self.console.print(format_epoch(row))


class JsonLinesProgress(Callback):
    """One JSON object per epoch on standard output, for scripts."""

    def on_epoch_end(self, trainer, epoch, row) -> None:
        sys.stdout.write(json.dumps({"event": "epoch", **row}) + "\n")
        sys.stdout.flush()
