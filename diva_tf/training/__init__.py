"""How DiVA trains (algorithm.md 5): the Keras trainer with its custom `train_step`, key encoder and queue
(`trainer.py`), one optimizer per parameter group and their schedules (`optimizers.py`,
`schedules.py`), the tf.distribute strategy (`distribute.py`), end-of-epoch callbacks
(`callbacks.py`), the run folder with its lock and per-epoch log (`workdir.py`, `run_log.py`), a
whole run (`run.py`) and the option groups (`options.py`)."""
