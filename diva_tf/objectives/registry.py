"""Losses and miners by name: the registries of --loss (the discriminative head's loss), --miner
(the triplets a triplet loss trains on) and --diva_ssl (the self-supervised task), and the
decorators that add to them, as pytorch-metric-learning does: any registered miner works with any
registered triplet loss.

A loss is `fn(embeddings, labels, **args) -> scalar`; registered with `triplets=True` it also takes
`triplets=` (a miner's (anchors, positives, negatives, valid), each [T]); `params` names the
weights the objective owns for it and passes by name ("beta": per-class margins [C], "proxies":
class proxies [C, D]). A miner is `fn(embeddings, labels, seed, **args) -> triplets`, stateless in
`seed` (int64 [2]). `fields` maps an argument to the `ObjectiveOptions` field it is read from.
Built-in functions are imported on first call, so this module (and the options validating names
against it) does not load TensorFlow.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Mapping


@dataclass(frozen=True)
class Registered:
    fn: Callable
    fields: Mapping[str, str] = field(default_factory=dict)  # argument -> option field
    params: tuple = ()       # objective-owned weights passed by name: "beta", "proxies"
    triplets: bool = False   # a loss that takes a miner's triplets

    def args_from(self, options) -> dict:
        """The arguments read from `options` (anything holding the option fields)."""
        return {arg: getattr(options, name) for arg, name in self.fields.items()}


LOSSES: dict = {}
MINERS: dict = {}


def _register(registry: dict, what: str, name: str, entry: Registered, replace: bool):
    if name in registry and not replace:
        raise ValueError(f"a {what} named {name!r} is registered already (replace=True to "
                         "replace it)")
    registry[name] = entry


def register_loss(name: str, *, triplets: bool = False, params=(), fields=None,
                  replace: bool = False):
    """Decorator: `fn(embeddings, labels, [triplets=], [beta=], [proxies=], **args)` becomes
    the loss `--loss=name` (and `ObjectiveOptions(loss=name)`).

    triplets=True: `fn` takes the triplets of the --miner (a triplet loss); params: objective
    weights it needs ("beta", "proxies"); fields: {argument: ObjectiveOptions field}, e.g.
    {"margin": "loss_triplet_margin"} (other arguments keep `fn`'s defaults).
    """
    unknown = set(params) - {"beta", "proxies"}
    if unknown:
        raise ValueError(f"register_loss({name!r}): unknown params {sorted(unknown)}; the "
                         "objective owns 'beta' and 'proxies'")

    def register(fn):
        _register(LOSSES, "loss", name, Registered(fn, dict(fields or {}), tuple(params),
                                                    triplets), replace)
        return fn
    return register


def register_miner(name: str, *, fields=None, replace: bool = False):
    """Decorator: `fn(embeddings, labels, seed, **args) -> (anchors, positives, negatives,
    valid)` becomes the miner `--miner=name`; fields as for `register_loss`."""
    def register(fn):
        _register(MINERS, "miner", name, Registered(fn, dict(fields or {})), replace)
        return fn
    return register


def _lazy(module: str, name: str) -> Callable:
    """`module.name`, imported (and looked up) when called."""
    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), name)(*args, **kwargs)
    call.__name__ = name
    return call


_LOSSES = "diva_tf.objectives.losses"
_MINERS = "diva_tf.objectives.miners"
register_loss("margin", triplets=True, params=("beta",),
              fields={"margin": "loss_margin_margin"})(_lazy(_LOSSES, "margin_loss"))
register_loss("triplet", fields={"margin": "loss_triplet_margin"})(
    _lazy(_LOSSES, "triplet_semihard_loss"))
register_loss("triplet_margin", triplets=True, fields={"margin": "loss_triplet_margin"})(
    _lazy(_LOSSES, "triplet_margin_loss"))
register_loss("multisimilarity", fields={"alpha": "loss_ms_alpha", "beta": "loss_ms_beta",
                                         "base": "loss_ms_base", "epsilon": "loss_ms_epsilon"})(
    _lazy(_LOSSES, "multi_similarity_loss"))
register_loss("proxy", params=("proxies",),
              fields={"scale": "loss_proxy_scale", "margin": "loss_proxy_margin"})(
    _lazy(_LOSSES, "proxy_softmax_loss"))
register_miner("distance", fields={"lower_cutoff": "miner_distance_lower_cutoff"})(
    _lazy(_MINERS, "distance_weighted_triplets"))
register_miner("random")(_lazy(_MINERS, "random_triplets"))



def build_loss(loss: str, miner: str, options) -> Callable:
    """The registered `loss` with its arguments from `options`, fed the triplets of the registered
    `miner` when it is a triplet loss: `(embeddings, labels, seed, params) -> scalar`, with
    params {"beta": ..., "proxies": ...} the objective's weights."""
    spec, mine = LOSSES[loss], MINERS[miner]
    args, mine_args = spec.args_from(options), mine.args_from(options)

    def loss_fn(embeddings, labels, seed, params):
        extra = {p: params[p] for p in spec.params}
        if spec.triplets:
            extra["triplets"] = mine.fn(embeddings, labels, seed, **mine_args)
        return spec.fn(embeddings, labels, **extra, **args)
    return loss_fn

# --diva_ssl -> the arguments of `diva_tf.objectives.losses.dance.dance_loss`: DaNCE (fast_moco, DiVA's
# distance-weighted negatives) or plain MoCo (every negative weighted 1).
SELF_SUPERVISED_LOSSES = {"fast_moco": {"weighted": True}, "moco": {"weighted": False}}
