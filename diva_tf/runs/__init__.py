"""What works on a training run's folder or an exported model as a whole: training in a run folder
(a new run, or the resumption of the one it holds), loading and exporting the model it trained
(`run_folder.py`), and evaluating a run or an export on its dataset (`evaluate.py`). The
command-line entry points parse their flags and call these."""
