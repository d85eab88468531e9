"""Evaluation inside a training run: embed the test (and validation) split with the current
embedder, score each head and the weighted combinations, and name the selection metric.

Model selection uses R@1 of the primary embedding (the dataset's published head weights, or the
first --eval_combinations entry) on the validation split when one is carved from the training
classes, else on the test split as DiVA does (algorithm.md 7.1).

With a validation split and `--eval_test=val_improved`, the test split is embedded only when some
embedding's validation R@1 beats its best so far (and when asked, e.g. at the last epoch): every
(epoch, embedding) that a validation-based selection can pick then has its test metrics, at a
fraction of the cost of embedding the test split every epoch.
"""

from __future__ import annotations

from diva_tf.data.options import PipelineOptions
from diva_tf.evaluation.clustering import FAISS_DEFAULT_SEED
from diva_tf.evaluation.combine import combination_name
from diva_tf.evaluation.model_eval import embed_function, evaluate_split
from diva_tf.evaluation.options import EvaluationOptions, default_combinations


class Evaluator:
    """Scores an embedder on the run's splits; built from the heads, the evaluation view of
    `PipelineOptions`, `EvaluationOptions` and the dataset name (published head weights, SOP's
    Recall@k cut-offs)."""

    def __init__(self, splits, heads, pipeline: PipelineOptions, evaluation: EvaluationOptions,
                 dataset: str | None = None):
        self.heads = list(heads)
        self.pipeline, self.evaluation, self.dataset = pipeline, evaluation, dataset
        self.combinations = (evaluation.combinations(self.heads)
                             or default_combinations(dataset, self.heads))
        self.splits = {"test": splits.test}
        if splits.val is not None:
            self.splits["val"] = splits.val
        # Test k-means: the number of training classes (algorithm.md 7.2), counted before any validation
        # carve-out so the numbers match `python -m diva_tf.evaluate`. Validation: its own class
        # count, since the training count can exceed its images (k capped at n: every image its own
        # cluster, and NMI/F1 the same constant every epoch).
        self.n_clusters = {"test": splits.train.num_classes + (splits.val.num_classes if splits.val else 0)}
        if splits.val is not None:
            self.n_clusters["val"] = splits.val.num_classes
        primary = (combination_name(self.heads, self.combinations[0]) if self.combinations
                   else self.heads[0])
        self.selection_key = f"{'val' if 'val' in self.splits else 'test'}/{primary}/recall@1"
        self.primary = primary
        self.test_always = evaluation.eval_test == "always" or "val" not in self.splits
        self._best_val = {}
        self._embed, self._embed_model = None, None

    def embed_function(self, model):
        """`model(images, training=False)` traced once for any batch size and reused by every
        evaluation of the run (a new tf.function per epoch would retrace the network each time)."""
        if self._embed is None or self._embed_model is not model:
            self._embed = embed_function(model, self.pipeline.crop)
            self._embed_model = model
        return self._embed

    def _score(self, embed, name: str) -> dict:
        results = evaluate_split(embed, self.splits[name], self.heads, self.pipeline,
                                 self.evaluation.eval_batch_size, self.combinations,
                                 self.evaluation.recall_k or None, self.n_clusters[name],
                                 self.dataset, FAISS_DEFAULT_SEED)
        return {f"{name}/{emb_name}/{metric}": float(value)
                for emb_name, metrics in results.items() for metric, value in metrics.items()
                if isinstance(value, (int, float))}

    def __call__(self, model, force_test: bool = False) -> dict:
        """Flat {"<split>/<embedding>/<metric>": value}."""
        embed = self.embed_function(model)
        if self.test_always:
            return {k: v for name in self.splits for k, v in self._score(embed, name).items()}
        scores = self._score(embed, "val")
        improved = False
        for key, value in scores.items():
            if key.endswith("/recall@1") and value > self._best_val.get(key, -1.0):
                self._best_val[key] = value
                improved = True
        if improved or force_test:
            scores.update(self._score(embed, "test"))
        return scores

    def summary(self, scores: dict) -> str:
        prefix = self.selection_key.rsplit("/", 1)[0]
        keys = [k for k in scores if k.startswith(prefix + "/") and
                k.rsplit("/", 1)[1] in ("recall@1", "recall@2", "nmi", "map@r")]
        return " ".join(f"{k.rsplit('/', 1)[1]}={scores[k]:.4f}" for k in keys) + f" [{prefix}]"
