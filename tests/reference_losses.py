"""Independent numpy references for diva_tf.objectives.miners and diva_tf.objectives.losses.

Written from docs/algorithm.md (sections 4.1-4.6) and the cited original code with explicit Python loops,
deliberately not vectorised like the TF code, in float64. Used only by the tests.
"""

import itertools
import math

import numpy as np


def unit_rows(rng, n, dim):
    x = rng.normal(size=(n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def normalize_rows(x):
    x = np.asarray(x, np.float64)
    out = np.zeros_like(x, dtype=np.float64)
    for i, row in enumerate(x):
        out[i] = row / max(math.sqrt(float(np.dot(row, row))), 1e-12)
    return out


def pairwise_distances(x):
    x = np.asarray(x, np.float64)
    n = len(x)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            d[i, j] = math.sqrt(max(np.dot(x[i], x[i]) + np.dot(x[j], x[j]) - 2 * np.dot(x[i], x[j]), 0.0))
    return d


def sphere_log_weight(d, dim):
    """(2 - D) ln d - ((D - 3) / 2) ln(1 - d^2 / 4) for one distance."""
    return (2.0 - dim) * math.log(d) - (dim - 3.0) / 2.0 * math.log(1.0 - d * d / 4.0)


def negative_probabilities(x, labels, lower_cutoff=0.5):
    """q_ij of algorithm.md 4.2 step 4, one row per anchor; zero rows where an anchor has no negative."""
    n, dim = x.shape
    dist = pairwise_distances(x)
    q = np.zeros((n, n))
    for i in range(n):
        log_w = [0.0 if labels[j] == labels[i] else sphere_log_weight(max(dist[i, j], lower_cutoff), dim)
                 for j in range(n)]
        top = max(log_w)
        w = [0.0 if labels[j] == labels[i] else math.exp(log_w[j] - top) for j in range(n)]
        if sum(w) > 0:
            q[i] = np.array(w) / sum(w)
    return q


def intra_triplet_probabilities(labels):
    """{(a, p, n): probability} of one intra-class triplet (algorithm.md 4.4)."""
    classes = sorted(set(labels))
    probs = {}
    for c in classes:
        members = [i for i, y in enumerate(labels) if y == c]
        for a, p, n in itertools.product(members, repeat=3):
            probs[(a, p, n)] = 1.0 / len(classes) / len(members) ** 3
    return probs


def margin_loss(x, labels, beta, triplets, margin=0.2):
    """algorithm.md 4.1 with triplets as a list of (a, p, n)."""
    x = np.asarray(x, np.float64)
    total, active = 0.0, 0
    for a, p, n in triplets:
        d_ap = math.sqrt(float(np.sum((x[a] - x[p]) ** 2)) + 1e-8)
        d_an = math.sqrt(float(np.sum((x[a] - x[n]) ** 2)) + 1e-8)
        b = float(beta[labels[a]])
        pos = max(0.0, d_ap - b + margin)
        neg = max(0.0, b - d_an + margin)
        total += pos + neg
        if pos > 0 or neg > 0:
            active += 1
    return total / active if active else total


def dance_weights(queries, queue, lower=0.5, upper=1.4, fixed=False):
    """W of algorithm.md 4.5 step 4, straight from fast_moco.py but in float64 (1e-45 clamp as float32 2^-149)."""
    queries, queue = np.asarray(queries, np.float64), np.asarray(queue, np.float64)
    b, dim = queries.shape
    m = len(queue)
    omega, delta = np.zeros((b, m)), np.zeros((b, m))
    for i in range(b):
        for k in range(m):
            s = float(np.dot(queries[i], queue[k]))
            delta[i, k] = max(math.sqrt(max(2.0 - 2.0 * s, 0.0)), lower)
            omega[i, k] = sphere_log_weight(delta[i, k], dim)
    w = np.zeros((b, m))
    for i in range(b):
        top = omega[i].max() if fixed else omega.max()
        for k in range(m):
            w[i, k] = 0.0 if delta[i, k] > upper else math.exp(omega[i, k] - top)
            w[i, k] = max(w[i, k], 2.0 ** -149)
    norm = w.sum(axis=1, keepdims=True) if fixed else w.sum(axis=0, keepdims=True)
    return w / norm


def dance_loss(queries, keys, queue, tau, lower=0.5, upper=1.4, fixed=False, weighted=True,
               weight_queries=None):
    """algorithm.md 4.5; `weight_queries` (default: queries) feeds only the weights, to freeze them in FD."""
    queries, keys, queue = (np.asarray(v, np.float64) for v in (queries, keys, queue))
    b, m = len(queries), len(queue)
    w = (dance_weights(queries if weight_queries is None else weight_queries, queue, lower, upper, fixed)
         if weighted else np.ones((b, m)))
    total = 0.0
    for i in range(b):
        logits = [float(np.dot(queries[i], keys[i])) / tau]
        logits += [w[i, k] * float(np.dot(queries[i], queue[k])) / tau for k in range(m)]
        top = max(logits)
        total += top + math.log(sum(math.exp(z - top) for z in logits)) - logits[0]
    return total / b


def regressor(x, w1, b1, w2, b2):
    h = np.maximum(x @ w1 + b1, 0.0)
    return h @ w2 + b2


def correlation(source, target, weights):
    """mean_b (1/D) sum_j (t[b, j] * normalize(xi(s))[b, j])^2 on already normalised inputs."""
    proj = normalize_rows(regressor(source, *weights))
    b, dim = target.shape
    total = 0.0
    for i in range(b):
        total += sum((target[i, j] * proj[i, j]) ** 2 for j in range(dim)) / dim
    return total / b


def decorrelation_loss(source, target, weights, rho):
    return -rho * correlation(normalize_rows(source), normalize_rows(target), weights)


def triplet_semihard_loss(x, labels, margin, squared=False):
    """tfa.losses.triplet_semihard_loss (0.23, "L2" or "squared-L2"), as loops over positive pairs."""
    d = pairwise_distances(x)
    if squared:
        d = d ** 2
    np.fill_diagonal(d, 0.0)
    n = len(x)
    total, count = 0.0, 0
    for a in range(n):
        negatives = [k for k in range(n) if labels[k] != labels[a]]
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            count += 1
            farther = [d[a, k] for k in negatives if d[a, k] > d[a, p]]
            if farther:
                d_an = min(farther)
            elif negatives:
                d_an = max(d[a, k] for k in negatives)
            else:
                d_an = min(d[a])
            total += max(margin + d[a, p] - d_an, 0.0)
    return total / count if count else 0.0


def multi_similarity_loss(x, labels, alpha=2.0, beta=50.0, base=0.5, epsilon=0.1):
    """pytorch-metric-learning MultiSimilarityMiner + MultiSimilarityLoss (cosine, mean reducer)."""
    x = normalize_rows(x)
    n = len(x)
    s = x @ x.T
    losses, n_pos, n_neg = [], 0, 0
    for i in range(n):
        pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
        neg = [j for j in range(n) if labels[j] != labels[i]]
        hard_pos = [j for j in pos if neg and s[i, j] - epsilon < max(s[i, k] for k in neg)]
        hard_neg = [j for j in neg if pos and s[i, j] + epsilon > min(s[i, k] for k in pos)]
        n_pos += len(hard_pos)
        n_neg += len(hard_neg)
        pos_term = math.log(1.0 + sum(math.exp(-alpha * (s[i, j] - base)) for j in hard_pos)) / alpha
        neg_term = math.log(1.0 + sum(math.exp(beta * (s[i, j] - base)) for j in hard_neg)) / beta
        losses.append(pos_term + neg_term)
    if n_pos <= 1 and n_neg <= 1:
        return 0.0
    return sum(losses) / n


def proxy_softmax_loss(x, labels, proxies, scale=16.0, margin=0.0):
    """Normalized softmax / ArcFace: CE of scale * [cos(theta_c) or cos(arccos(cos) + m) for the target]."""
    x, w = normalize_rows(x), normalize_rows(proxies)
    total = 0.0
    for i in range(len(x)):
        logits = []
        for c in range(len(w)):
            cos = float(np.dot(x[i], w[c]))
            if c == labels[i]:
                cos = math.cos(math.acos(min(max(cos, -1.0), 1.0)) + margin)
            logits.append(scale * cos)
        top = max(logits)
        total += top + math.log(sum(math.exp(z - top) for z in logits)) - logits[labels[i]]
    return total / len(x)


def central_difference(f, x, eps=1e-6):
    """Numerical gradient of the scalar f at the float64 array x."""
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += eps
        down[idx] -= eps
        grad[idx] = (f(up) - f(down)) / (2 * eps)
    return grad
