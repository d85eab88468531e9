"""Console output of training (issue 26): the progress line fits one terminal row, only a terminal
gets it redrawn in place, a log gets plain text, and every epoch ends with one summary line."""

import io
import re

import numpy as np
import pytest

from diva_tf.training import callbacks as cb

STEPS, BS, EPOCHS = 10, 8, 3
STEP_SECONDS = 0.5
LOGS = {"loss": 1.23456, "discriminative": 0.61234, "selfsimilarity": 3.1e-7, "shared": 0.25,
        "intra": 0.2, "decorrelation": -0.0175, "dance_zero_loss_fraction": 0.99,
        "correlation_intra_discriminative": 6e-5}
SELECTION_KEY = "val/combined[1,1,1,1]/recall@1"


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    """Fake time: epoch e starts at 100 * e; step s of it ends STEP_SECONDS * (s + 1) later."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run_epochs(progress, clock, evaluated=None):
    """Drive `progress` like `fit` for EPOCHS epochs; `evaluated` maps epoch -> (R@1, improved),
    handed over as EpochEnd does (`note_selection` into the shared logs, before Progress)."""
    evaluated = evaluated or {}
    for epoch in range(EPOCHS):
        clock.now = 100.0 * epoch
        progress.on_epoch_begin(epoch)
        for step in range(STEPS):
            clock.now = 100.0 * epoch + STEP_SECONDS * (step + 1)
            progress.on_train_batch_end(step, dict(LOGS))
        logs = dict(LOGS)
        if epoch in evaluated:
            value, improved = evaluated[epoch]
            cb.note_selection(logs, SELECTION_KEY, {SELECTION_KEY: value}, improved)
        clock.now += 7.0  # evaluation and checkpoint: not training time
        progress.on_epoch_end(epoch, logs)


@pytest.mark.parametrize("columns", [12, 30, 46, 80, 200])
def test_progress_line_fits_one_row(monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", str(columns))
    out, clock = Terminal(), Clock()
    run_epochs(cb.Progress(STEPS, BS, EPOCHS, stream=out, clock=clock), clock)
    epochs = out.getvalue().split("\n")[:-1]
    redraws = [row for line in epochs for row in line.split("\r")[:-1]]  # the last: its summary
    assert sum("epoch" in row for row in redraws) == EPOCHS * (STEPS - 1)
    assert max(len(row) for row in redraws) <= columns - 1
    assert "\x1b" not in out.getvalue()


def test_progress_line_content():
    # step 4 of 10 after 2 s: 4 * 8 / 2 = 16 img/s, 2 / 4 * 6 = 3 s left
    assert cb.progress_line(1, 3, 4, 10, 1.23456, 16.0, 3.0, 79) == \
        "epoch 1/3  4/10  loss 1.2346  16 img/s  ETA 0:03"
    assert cb.progress_line(1, 3, 4, 10, 1.23456, 16.0, 3725.0, 79).endswith("ETA 1:02:05")
    assert cb.progress_line(1, 3, 4, 10, 1.23456, 16.0, 3.0, 20) == "epoch 1/3  4/10"
    assert cb.progress_line(1, 3, 4, 10, 1.23456, 16.0, 3.0, 4) == "epoc"


def test_terminal_redraws_in_place_and_ends_each_epoch_with_its_summary(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    out, clock = Terminal(), Clock()
    run_epochs(cb.Progress(STEPS, BS, EPOCHS, stream=out, clock=clock), clock)
    text = out.getvalue()
    lines = text.split("\n")[:-1]
    assert len(lines) == EPOCHS
    for epoch, line in enumerate(lines, 1):
        # redraws of this epoch, then the row blanked, then the summary from its first column
        shown = line.split("\r")
        assert shown[-1].startswith(f"epoch {epoch}/{EPOCHS}  loss 1.2346 (")
        assert shown[-2].strip() == ""
        assert f"epoch {epoch}/{EPOCHS}  {STEPS - 1}/{STEPS}  loss 1.2346" in line


def test_log_file_gets_plain_text_and_only_occasional_progress(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    out, clock = io.StringIO(), Clock()
    run_epochs(cb.Progress(STEPS, BS, EPOCHS, stream=out, log_every=1.0, clock=clock), clock)
    text = out.getvalue()
    assert "\r" not in text and not re.search(r"[\x00-\x09\x0b-\x1f\x7f]", text)
    lines = text.splitlines()
    # a line whenever 1 s passed since the last (steps end every 0.5 s): steps 2, 4, 6, 8 of 10
    progress = [l for l in lines if "ETA" in l]
    assert progress[:4] == [f"epoch 1/3  {s}/10  loss 1.2346  16 img/s  ETA 0:0{(10 - s) // 2}"
                            for s in (2, 4, 6, 8)]
    assert len(progress) == 4 * EPOCHS and len(lines) == 5 * EPOCHS

    quiet = io.StringIO()
    run_epochs(cb.Progress(STEPS, BS, EPOCHS, stream=quiet, clock=clock), clock)  # every 30 s
    assert len(quiet.getvalue().splitlines()) == EPOCHS


def test_one_summary_line_per_epoch_with_the_given_values():
    out, clock = io.StringIO(), Clock()
    run_epochs(cb.Progress(STEPS, BS, EPOCHS, stream=out, clock=clock), clock,
               evaluated={1: (0.25634, True), 2: (0.2, False)})
    lines = out.getvalue().splitlines()
    rate = STEPS * BS / (STEPS * STEP_SECONDS)  # 80 images in 5 s of training: 16 img/s
    terms = "disc 0.612 selfsim 3.1e-07 shared 0.25 intra 0.2 decorr -0.0175"
    common = f"loss 1.2346 ({terms})  {rate:.0f} img/s  {STEPS * STEP_SECONDS:.1f} s"
    assert lines == [f"epoch 1/3  {common}",
                     f"epoch 2/3  {common}  val R@1 0.2563 (best)",
                     f"epoch 3/3  {common}  val R@1 0.2000"]


def test_summary_reads_running_means_as_keras_gives_them():
    logs = {"loss": np.array([1.0, 3.0]), "intra": [0.5]}  # multi-worker: one value per replica
    assert cb.summary_line(4, 9, logs, 2.0, 100.0) == \
        "epoch 4/9  loss 2.0000 (intra 0.5)  100 img/s  2.0 s"
    assert cb.metric_label("test/discriminative/map@r") == "test map@r"


def test_fit_hands_the_evaluation_to_a_later_callback(capsys):
    """With Keras's own `fit`: what a callback listed before Progress notes in `logs` at the
    epoch's end shows in Progress's summary line."""
    import keras

    class Evaluate(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            cb.note_selection(logs, SELECTION_KEY, {SELECTION_KEY: 0.5 + epoch / 10}, epoch == 0)

    x = np.zeros((8, 2), np.float32)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, kernel_initializer="zeros")])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, np.ones((8, 1), np.float32), batch_size=4, epochs=2, verbose=0, shuffle=False,
              callbacks=[Evaluate(), cb.Progress(2, 4, 2)])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1/2  loss ") and lines[0].endswith("val R@1 0.5000 (best)")
    assert lines[1].startswith("epoch 2/2  loss ") and lines[1].endswith("val R@1 0.6000")


def test_a_run_stopped_mid_epoch_leaves_no_progress_row_on_the_terminal(monkeypatch):
    """StopOnNonFinite (or Ctrl-C) raises inside `fit`: the row drawn in place is blanked, so the
    error line that follows starts at column 0 of a clean row."""
    monkeypatch.setenv("COLUMNS", "80")
    out, clock = Terminal(), Clock()
    progress = cb.Progress(STEPS, BS, EPOCHS, stream=out, clock=clock)
    progress.on_epoch_begin(0)
    for step in range(4):
        clock.now = STEP_SECONDS * (step + 1)
        progress.on_train_batch_end(step, dict(LOGS))
    drawn = out.getvalue().split("\r")[-1]
    assert drawn.startswith("epoch 1/3  4/10  loss 1.2346")
    progress.close()
    rows = out.getvalue().split("\r")
    assert rows[-2] == " " * len(drawn) and rows[-1] == ""  # blanked, cursor at column 0
    progress.close()  # nothing left to blank: writes nothing
    assert out.getvalue().split("\r") == rows


def test_evaluation_progress_in_a_log_is_plain_lines():
    """Embedding progress written to a file: one plain line every LOG_EVERY seconds and at the
    end, no terminal controls (Keras's Progbar is for terminals only)."""
    import io

    from diva_tf.evaluation.embed import PlainProgress

    now = [0.0]
    out = io.StringIO()
    progress = PlainProgress(40, stream=out, every=30.0, clock=lambda: now[0])
    for step in range(1, 41):
        now[0] = step * 1.0  # one batch per second
        progress.update(step)
    progress.done(40)
    assert out.getvalue().splitlines() == ["embedding: 30/40 batches", "embedding: 40/40 batches"]
