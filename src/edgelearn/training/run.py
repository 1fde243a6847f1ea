"""The one entry to fine-tuning: :func:`train` runs a :class:`TrainConfig` in this process, as data-parallel
processes or with a parameter server (the modes import the fine-tuning job; nothing imports back)."""

from edgelearn.training.config import TrainConfig
from edgelearn.training.distributed import join_ps, run_ddp, run_ps
from edgelearn.training.finetune import score_test, train_here


def train(config: TrainConfig, *, progress: bool = False, log=print) -> dict:
    """Fine-tune and save; returns the history (per epoch: train/val loss and accuracy, seconds), the best epoch
    and, when the data set has a test/ folder, the best epoch's ``test_loss`` and ``test_accuracy`` on it (on the
    classes it trained on; ``test_classes_left_out`` names any others). A parameter-server worker on its own
    machine (``config.rank``) returns once the server is done, saying which server holds the model."""
    if config.mode == "single":
        job, history, best = train_here(config, progress=progress, log=log)
    elif config.mode == "ddp":
        job, history, best = run_ddp(config, log=log)
    elif config.rank is not None:
        join_ps(config)
        return {"mode": config.mode, "rank": config.rank, "server": config.address}
    else:
        job, history, best = run_ps(config, log=log)
    return {**job.summary, "mode": config.mode, "workers": config.workers if config.mode != "single" else 1,
            "best_epoch": best["epoch"], "best_val_loss": best["val_loss"], **score_test(job, config.output),
            "history": history}
