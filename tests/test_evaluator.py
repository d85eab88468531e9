"""In-run evaluation: one traced embedding function for the whole run, scores from the metrics."""

import numpy as np
import pytest

from diva_tf import data
from diva_tf.config import Config
from diva_tf.evaluation import embed_dataset, evaluate_embeddings
from diva_tf.evaluator import Evaluator
from diva_tf.model import build_embedding_model
from fixtures_data import isolated_cache, make_class_tree  # noqa: F401


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = make_class_tree(str(tmp_path_factory.mktemp("folder")), {f"c{i}": 3 + i % 2 for i in range(8)})
    cfg = Config(backbone="tiny", backbone_weights="none", dataset="folder", data_dir=root, crop=32,
                 resize=36, embed_dim=8, eval_batch_size=5, val_classes_fraction=0.25)
    return cfg, data.load_splits(cfg)


def test_embedding_function_is_traced_once_per_run(setup):
    cfg, splits = setup
    evaluator = Evaluator(cfg, splits)
    model = build_embedding_model(cfg)
    first = evaluator(model)
    # every epoch, on test and validation splits whose last batches differ in size
    assert {len(splits.test) % 5, len(splits.val) % 5} != {0}
    second = evaluator(model)
    assert evaluator.embed_function(model).experimental_get_tracing_count() == 1
    assert first == second


def test_scores_are_those_of_the_metric_suite(setup):
    cfg, splits = setup
    evaluator = Evaluator(cfg, splits)
    model = build_embedding_model(cfg)
    scores = evaluator(model)
    embs, labels = embed_dataset(lambda x: model(x, training=False),
                                 data.eval_dataset(splits.test, cfg), verbose=False)
    ref = evaluate_embeddings(embs, labels, heads=list(cfg.diva_features),
                              combinations=evaluator.combinations, n_clusters=evaluator.n_clusters,
                              dataset=cfg.dataset)
    name = evaluator.primary
    assert scores[f"test/{name}/recall@1"] == pytest.approx(ref[name]["recall@1"])
    assert evaluator.selection_key == f"val/{name}/recall@1"
    assert np.isfinite(scores[evaluator.selection_key])
