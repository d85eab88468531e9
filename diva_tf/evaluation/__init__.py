"""Evaluation of DiVA embeddings (algorithm.md 2.4 and 7): exact faiss retrieval, Recall@k, NMI, F1,
mAP@C, MAP@R, R-precision; test-time head combination; embedding a split; reports.

numpy and faiss only (TensorFlow is imported only by `combine_heads_tf` and by the Progbar of
`embed_dataset`). Evaluating a model on a split (`model_eval.py`) and the evaluator of a training
run (`in_run.Evaluator`) use TensorFlow and are imported from their modules, not from here; the
option group is `options.EvaluationOptions`.
"""

from diva_tf.evaluation.clustering import (FAISS_DEFAULT_SEED, clustering_metrics, kmeans_assign,
                                           nmi, pairwise_f1)
from diva_tf.evaluation.combine import combination_name, combine_heads, combine_heads_tf
from diva_tf.evaluation.embed import embed_dataset
from diva_tf.evaluation.knn import ExactIndex, iter_neighbours, nearest_neighbours
from diva_tf.evaluation.report import format_table, write_json
from diva_tf.evaluation.retrieval import retrieval_metrics
from diva_tf.evaluation.retrievals import save_retrievals
from diva_tf.evaluation.suite import (default_recall_k, evaluate_embedding, evaluate_embeddings,
                                      named_embeddings)

__all__ = ["FAISS_DEFAULT_SEED", "ExactIndex", "clustering_metrics", "combination_name",
           "combine_heads", "combine_heads_tf", "default_recall_k", "embed_dataset",
           "evaluate_embedding", "evaluate_embeddings", "format_table", "iter_neighbours",
           "kmeans_assign", "named_embeddings", "nearest_neighbours", "nmi", "pairwise_f1",
           "retrieval_metrics", "save_retrievals", "write_json"]
