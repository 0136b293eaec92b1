"""Watchable training: first line before step 1, periodic lines off-terminal, a live bar
on a terminal, MFU only when the device peak is known, one line for a missing tracker."""

from __future__ import annotations

import io
import logging

import pytest

from lmforge.training.progress import TrainingProgress, Trackers, available_trackers, requested_trackers

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def messages(caplog) -> list[str]:
    # the same record can reach caplog's handler twice (lmforge logger and root)
    unique = {id(r): r for r in caplog.records}.values()
    return [r.getMessage() for r in unique if r.name.startswith("lmforge")]


def test_lines_off_terminal_first_after_step_one_then_by_time(caplog):
    watch = TrainingProgress(100, bar=False, interval_s=3600, label="pretrain")
    watch.start()
    assert messages(caplog)[0].startswith("pretrain: starting at step 0 of 100")
    for step in range(1, 6):
        watch.step(step, 5.0 - step / 10, tokens=step * 512)
    lines = messages(caplog)[1:]
    # step 1 prints at once; the next steps wait for the interval (an hour here)
    assert len(lines) == 1 and lines[0].startswith("pretrain step 1/100 | loss 4.9000")
    assert "tok/s" in lines[0] and "512 tokens seen" in lines[0] and "ETA" in lines[0]
    assert "MFU" not in lines[0]                        # no device peak: no made-up MFU
    watch.interval_s = 0
    watch.step(6, 4.4, tokens=6 * 512)
    assert messages(caplog)[-1].startswith("pretrain step 6/100 | loss 4.4000")


def test_trainer_line_resets_the_heartbeat(caplog):
    watch = TrainingProgress(10, bar=False, interval_s=0.2)
    watch.start()
    watch.step(1, 3.0, 100)
    watch.logged()
    watch.step(2, 3.0, 200)
    assert len(messages(caplog)) == 2               # start + step 1; step 2 follows a trainer line


def test_mfu_from_flops_and_peak():
    watch = TrainingProgress(10, bar=False, flops_per_token=6e6, peak_flops=1e12)
    watch._window = [(0.0, 0), (1.0, 1000)]         # 1000 tokens/s
    assert watch.mfu(watch.rate()) == pytest.approx(6e9 / 1e12)
    assert "MFU 0.6%" in watch.summary(1, 2.0, 1000)


def test_bar_on_a_terminal_shows_step_loss_rate_tokens(caplog):
    out = io.StringIO()
    watch = TrainingProgress(10, bar=True, stream=out, flops_per_token=6e6, peak_flops=1e12, label="sft")
    watch.start()
    for step in range(1, 4):
        watch.step(step, 2.5, tokens=step * 1000)
    watch.close()
    text = out.getvalue()
    assert messages(caplog)[0].startswith("sft: starting at step 0 of 10; progress bar below")
    assert "3/10" in text and "loss 2.500" in text and "tok/s" in text and "3.00K tok" in text and "MFU" in text


def test_non_main_ranks_are_silent(caplog):
    watch = TrainingProgress(10, main=False, interval_s=0)
    watch.start()
    watch.step(1, 1.0, 10)
    assert messages(caplog) == []


def test_requested_trackers():
    assert requested_trackers("wandb, mlflow", tensorboard=True) == (["wandb", "mlflow"], ["tensorboard"])
    assert requested_trackers(["tensorboard"], tensorboard=True) == (["tensorboard"], [])
    assert requested_trackers("", tensorboard=False) == ([], [])


def test_missing_tracker_is_one_clear_line(caplog):
    from accelerate import Accelerator

    missing = [name for name in ("wandb", "trackio", "mlflow") if name not in available_trackers()]
    if not missing:
        pytest.skip("every tracker is installed here")
    with caplog.at_level(logging.INFO, logger="lmforge"):
        trackers = Trackers(Accelerator(cpu=True), __import__("pathlib").Path("."), asked=[missing[0], "nosuch"],
                            optional=[])
    warned = [m for m in messages(caplog) if f"{missing[0]!r}" in m]
    assert len(warned) == 1 and "not installed" in warned[0] and f"pip install {missing[0]}" in warned[0]
    assert any("'nosuch' is unknown" in m for m in messages(caplog))
    assert trackers.names == []
    trackers.log({"train/loss": 1.0}, step=1)     # nothing to log to, and no error


def test_training_reports_before_step_one_and_names_missing_trackers(tiny_packed, tmp_path, caplog):
    """The real loop (lmforge.training.loop) through the hooks: the start line comes before any
    step line, step 1 is reported, a missing asked-for tracker is one warning."""
    from test_training import cfg, train

    if "wandb" in available_trackers():
        pytest.skip("wandb is installed here")
    with caplog.at_level(logging.INFO, logger="lmforge"):
        train(tiny_packed, tmp_path / "run", cfg(max_steps=3, log_every=100, report_to="wandb", tensorboard=False))
    lines = messages(caplog)
    start = next(i for i, m in enumerate(lines) if m.startswith("pretrain: starting at step 0 of 3"))
    step1 = next(i for i, m in enumerate(lines) if m.startswith("pretrain step 1/3 | loss"))
    assert start < step1
    assert sum("'wandb' was asked for but is not installed" in m for m in lines) == 1
    assert sum(m.startswith(("step 3/3 |", "pretrain step 3/3")) for m in lines) == 1   # the last step, once


def test_an_installed_tracker_gets_config_scalars_and_finish_through_accelerate(tiny_packed, tmp_path, caplog):
    """A tracker registered with accelerate (its own extension point for log_with) receives
    the run's hyperparameters, the training and evaluation scalars, and finish()."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker, register_tracker_class

    from test_training import cfg, train

    calls: dict[str, list] = {"start": [], "config": [], "log": [], "finish": []}

    class Recorder(GeneralTracker):
        name = "lmforge_test_recorder"
        requires_logging_directory = True

        def __init__(self, run_name, logging_dir, **kwargs):
            super().__init__()
            self.run_name, self.logging_dir = run_name, logging_dir

        @property
        def tracker(self):
            return self

        def start(self):
            calls["start"].append(self.logging_dir)

        def store_init_configuration(self, values):
            calls["config"].append(values)

        def log(self, values, step=None, **kwargs):
            calls["log"].append((step, values))

        def finish(self):
            calls["finish"].append(True)

    register_tracker_class(Recorder)
    try:
        with caplog.at_level(logging.INFO, logger="lmforge"):
            train(tiny_packed, tmp_path / "run", cfg(max_steps=4, log_every=2, eval_every=2, tensorboard=False,
                                                     report_to=Recorder.name))
    finally:
        LOGGER_TYPE_TO_CLASS.pop(Recorder.name, None)
    assert calls["start"] == [str(tmp_path / "run")] and calls["config"] == [{"test": True}]
    train_steps = [step for step, values in calls["log"] if "train/loss" in values]
    assert train_steps == [2, 4]
    assert {"train/lr", "train/grad_norm", "train/tok_s"} <= set(calls["log"][0][1])
    assert any("eval/loss" in values for _, values in calls["log"])
    assert calls["finish"] == [True]
    assert any(m == f"experiment trackers: {Recorder.name}" for m in messages(caplog))
