"""benchmarks/head_diversity.py on a hand-worked example: per-head R@1, first-neighbour agreement,
any-head R@1 and the equal-weight combination."""

import importlib.util
import os

import numpy as np

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "head_diversity.py")
_spec = importlib.util.spec_from_file_location("head_diversity", _PATH)
head_diversity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(head_diversity)


def _unit_2d(angles_deg):
    a = np.radians(angles_deg)
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def test_diversity_on_points_on_a_circle():
    labels = np.array([0, 0, 1, 1])
    # Head a pairs (0,1) and (2,3): all right. Head b pairs (0,2) and (1,3): all wrong.
    embs = {"a": _unit_2d([0, 10, 90, 100]), "b": _unit_2d([0, 90, 5, 97])}
    got = head_diversity.diversity(embs, labels, ["a", "b"])
    assert got["recall@1"] == {"a": 1.0, "b": 0.0}
    assert got["any_head_recall@1"] == 1.0
    assert got["same_neighbour"] == {"a/b": 0.0}
    # Equal weights: combined squared distance = sum over heads of 2 - 2 cos(angle). Item 0: to 1,
    # 0.030 + 2 = 2.030; to 2, 2 + 0.008 = 2.008; so 0 -> 2 (wrong). Likewise 1 -> 3 (2.015 <
    # 2.030), 2 -> 0 (2.008 < 2.100), 3 -> 1 (2.015 < 2.100): b's small angles win everywhere.
    assert got["combined_recall@1"] == 0.0


def test_identical_heads_agree_everywhere():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.repeat(np.arange(6), 2)
    got = head_diversity.diversity({"a": x, "b": x.copy()}, labels, ["a", "b"])
    assert got["same_neighbour"] == {"a/b": 1.0}
    assert got["recall@1"]["a"] == got["recall@1"]["b"] == got["any_head_recall@1"]
    assert got["combined_recall@1"] == got["recall@1"]["a"]
    nn = np.argsort(((x[:, None] - x[None]) ** 2).sum(-1) + np.eye(12) * 9, axis=1)[:, 0]
    assert got["recall@1"]["a"] == np.mean(labels[nn] == labels)
