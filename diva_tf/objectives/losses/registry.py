"""The discriminative-head losses by --loss name, and the self-supervised task by --diva_ssl: the
one registry of each choice.

Each entry names the option fields it reads (constructor argument -> field of
`diva_tf.objectives.options.ObjectiveOptions`), the weights the
objective must own for it ("beta": per-class margin betas [C], "proxies": class proxies [C, D]),
and builds `loss(embeddings, labels, seed, params) -> scalar` from those arguments. The loss
modules (TensorFlow) are imported only when a loss is built, so the options validate names
without loading TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping


@dataclass(frozen=True)
class DiscriminativeLoss:
    build: Callable[..., Callable]  # (**args) -> loss(embeddings, labels, seed, params)
    fields: Mapping[str, str]       # build argument -> option field
    params: tuple = ()              # objective-owned weights the loss uses: "beta", "proxies"

    def args_from(self, options) -> dict:
        """The build arguments, read from `options` (anything holding the option fields)."""
        return {arg: getattr(options, name) for arg, name in self.fields.items()}


def _margin(margin, lower_cutoff):
    from diva_tf.objectives.losses.margin import margin_loss
    from diva_tf.objectives.miners import distance_weighted_triplets

    def loss(embeddings, labels, seed, params):
        triplets = distance_weighted_triplets(embeddings, labels, seed, lower_cutoff)
        return margin_loss(embeddings, labels, params["beta"], triplets, margin)
    return loss


def _triplet(margin):
    from diva_tf.objectives.losses.triplet import triplet_semihard_loss
    return lambda embeddings, labels, seed, params: triplet_semihard_loss(embeddings, labels, margin)


def _multisimilarity(alpha, beta, base, epsilon):
    from diva_tf.objectives.losses.multisimilarity import multi_similarity_loss
    return lambda embeddings, labels, seed, params: multi_similarity_loss(
        embeddings, labels, alpha, beta, base, epsilon)


def _proxy(scale, margin):
    from diva_tf.objectives.losses.proxy import proxy_softmax_loss
    return lambda embeddings, labels, seed, params: proxy_softmax_loss(
        embeddings, labels, params["proxies"], scale, margin)


DISCRIMINATIVE_LOSSES = {
    "margin": DiscriminativeLoss(
        _margin, {"margin": "loss_margin_margin", "lower_cutoff": "miner_distance_lower_cutoff"},
        params=("beta",)),
    "triplet": DiscriminativeLoss(_triplet, {"margin": "loss_triplet_margin"}),
    "multisimilarity": DiscriminativeLoss(
        _multisimilarity, {"alpha": "loss_ms_alpha", "beta": "loss_ms_beta", "base": "loss_ms_base",
                           "epsilon": "loss_ms_epsilon"}),
    "proxy": DiscriminativeLoss(_proxy, {"scale": "loss_proxy_scale", "margin": "loss_proxy_margin"},
                                params=("proxies",)),
}


# --diva_ssl -> the arguments of `diva_tf.objectives.losses.dance.dance_loss`: DaNCE (fast_moco, DiVA's
# distance-weighted negatives) or plain MoCo (every negative weighted 1).
SELF_SUPERVISED_LOSSES = {"fast_moco": {"weighted": True}, "moco": {"weighted": False}}
