"""Config validation and the flag -> Config path."""

import subprocess
import sys

import pytest

from diva_tf.config import Config, ConfigError, parse_weights


def test_defaults_follow_spec_section_6():
    cfg = Config()
    assert (cfg.lr, cfg.decay, cfg.bs, cfg.samples_per_class) == (1e-5, 4e-4, 112, 2)
    assert (cfg.loss_margin_margin, cfg.loss_margin_beta, cfg.loss_margin_beta_lr) == (0.2, 1.2, 5e-4)
    assert (cfg.diva_moco_momentum, cfg.diva_moco_n_key_batches) == (0.9, 50)
    assert (cfg.diva_decorrnet_dim, cfg.diva_decorrnet_lr) == (512, 1e-5)
    assert (cfg.tau, cfg.gamma, cfg.n_epochs) == ([10000], 0.3, 150)
    cfg.validate()


def test_decorrelation_directions_each_aux_to_discriminative():
    cfg = Config()
    assert cfg.decorrelation_directions == [("selfsimilarity", "discriminative"),
                                            ("shared", "discriminative"),
                                            ("intra", "discriminative")]
    assert Config(diva_features=["selfsimilarity"], diva_rho_decorrelation=[]).decorrelation_directions == []
    three = Config(diva_features=["discriminative", "selfsimilarity", "shared"])
    assert three.decorrelation_directions == [("selfsimilarity", "discriminative"),
                                              ("shared", "discriminative"),
                                              ("shared", "selfsimilarity")]
    explicit = Config(diva_features=["discriminative", "intra"], diva_decorrelations=["intra-discriminative"],
                      diva_rho_decorrelation=[5.0]).validate()
    assert explicit.decorrelation_directions == [("intra", "discriminative")]
    with pytest.raises(ConfigError, match="diva_decorrelations"):
        explicit.replace(diva_decorrelations=["intra-shared"]).validate()


@pytest.mark.parametrize("kw, needle", [
    (dict(diva_rho_decorrelation=[1500.0]), "one rho per direction"),
    (dict(bs=111), "multiple of"),
    (dict(diva_features=["discriminative", "bogus"]), "diva_features"),
    (dict(backbone="vgg"), "--backbone"),
    (dict(resize=100, crop=224), "--resize"),
    (dict(dataset="mnist"), "unknown dataset"),
    (dict(eval_combinations=["1,1"]), "2 values for 4 heads"),
    (dict(optimizer="sgd"), "--optimizer='sgd': unknown optimizer; choose one of adam, adamw"),
    (dict(scheduler="linear"), "--scheduler='linear': unknown schedule; choose one of step, cosine"),
    (dict(strategy="tpu"), "--strategy='tpu': unknown strategy; choose one of auto, mirrored"),
    (dict(diva_ssl="simclr"), "--diva_ssl='simclr': unknown self-supervised task"),
    (dict(head_dims=[256, 128]), "--head_dims=256,128: one positive dimension per head"),
    (dict(head_dims=[256, 128, 0, 128]), "--head_dims=256,128,0,128: one positive"),
    (dict(fc_lr=0.0), r"--fc_lr=0.0: expected -1 \(share --lr\) or > 0"),
])
def test_inconsistent_settings_name_the_flag(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        Config(**kw).validate()


def test_validation_does_not_load_tensorflow():
    """Flag errors come before the seconds TensorFlow takes to import."""
    code = ("import sys; from diva_tf.config import Config; Config().validate(); "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_parse_weights():
    assert parse_weights("0.5,1,1,1", 4) == (0.5, 1.0, 1.0, 1.0)
    with pytest.raises(ConfigError):
        parse_weights("a,b", 2)
    with pytest.raises(ConfigError):
        parse_weights("0,0", 2)


def test_head_weights_per_dataset_spec_2_4():
    assert Config(dataset="cars196").head_weights == (0.5, 2.0, 2.0, 2.0)
    assert Config(dataset="cub200", diva_features=["intra", "discriminative"],
                  diva_rho_decorrelation=[1.0]).head_weights == (1.0, 0.5)


def test_config_roundtrip(tmp_path):
    cfg = Config(dataset="folder", tau=[3, 5], eval_combinations=["1,1,1,1"])
    cfg.save(tmp_path / "c.json")
    assert Config.load(tmp_path / "c.json") == cfg


def _train(*args):
    return subprocess.run([sys.executable, "-m", "diva_tf.train", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_rejects_bad_flags_before_reading_data(tmp_path):
    missing = str(tmp_path / "no_such_dir")
    r = _train(f"--data_dir={missing}", "--diva_rho_decorrelation=1,2", f"--workdir={tmp_path}/w")
    assert r.returncode != 0
    assert "one rho per direction" in r.stderr
    assert not (tmp_path / "w").exists()
    r = _train("--not_a_flag=1")
    assert r.returncode != 0 and "not_a_flag" in r.stderr
    r = _train("--tau=abc")
    assert r.returncode != 0 and "--tau" in r.stderr


def test_flagfile_parses_into_config(tmp_path):
    from absl import flags as absl_flags

    from diva_tf.config.flags import config_from_flags, define_flags

    define_flags()
    fv = absl_flags.FlagValues()
    for name in absl_flags.FLAGS:
        if name in {f.name for f in __import__("dataclasses").fields(Config)}:
            fv[name] = absl_flags.FLAGS[name]
    fv(["prog", "--flagfile=configs/cars196_r50.flags"])
    cfg = config_from_flags(fv)
    assert cfg.dataset == "cars196" and cfg.tau == [70] and cfg.gamma == 0.2
    assert cfg.diva_rho_decorrelation == [100.0] * 3 and cfg.diva_alpha_ssl == 0.15
    assert cfg.eval_combinations[0] == "0.5,2,2,2" and len(cfg.eval_combinations) == 4


def test_cli_missing_data_is_one_clear_line_and_leaves_no_workdir(tmp_path):
    r = _train(f"--data_dir={tmp_path / 'missing'}", f"--workdir={tmp_path}/w", "--backbone=tiny",
               "--backbone_weights=none")
    assert r.returncode == 2
    assert "error:" in r.stderr and "prepare emoji" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "w").exists()


# Values each numeric field must refuse, chosen from what the field means (rates and dimensions
# > 0, weights and margins >= 0, momenta and fractions in [0, 1), distance cutoffs on the unit
# sphere in (0, 2), a cosine similarity base in [-1, 1], numpy seeds in [0, 2**32)). Every numeric
# field is listed: a new one fails test_every_numeric_field_has_out_of_range_values until added.
OUT_OF_RANGE = {
    "val_classes_fraction": [-0.1, 1.0], "resize": [0, -1], "crop": [0], "bs": [0, -2],
    "samples_per_class": [0], "embed_dim": [0, -8], "head_dims": [[8, 8, 8, 0]], "gem_p": [0.0, -1.0],
    "loss_margin_margin": [-0.1], "loss_margin_beta": [-1.0], "loss_margin_beta_lr": [0.0, -1e-4],
    "miner_distance_lower_cutoff": [0.0, 2.0], "loss_triplet_margin": [-0.1], "loss_ms_alpha": [0.0],
    "loss_ms_beta": [0.0], "loss_ms_base": [1.5, -1.5], "loss_ms_epsilon": [-0.1],
    "loss_proxy_scale": [0.0], "loss_proxy_margin": [-0.1], "loss_proxy_lr": [0.0],
    "diva_alpha_ssl": [-0.3], "diva_alpha_shared": [-0.3], "diva_alpha_intra": [-0.3],
    "diva_rho_decorrelation": [[1500.0, -1.0, 1500.0]], "diva_decorrnet_dim": [0],
    "diva_decorrnet_lr": [0.0], "diva_moco_momentum": [1.0, -0.1], "diva_moco_temperature": [0.0],
    "diva_moco_n_key_batches": [0], "diva_moco_lower_cutoff": [0.0, 2.0],
    "diva_moco_upper_cutoff": [0.0, -1.0], "diva_aux_discriminative": [-1.0],
    "diva_combined_loss": [-1.0], "lr": [0.0, -1.0], "fc_lr": [0.0, -2.0], "decay": [-4e-4],
    "tau": [[0], [10, -5]], "gamma": [0.0, -0.3], "warmup_epochs": [-1], "n_epochs": [0, -1],
    "steps_per_epoch": [-1], "seed": [-1, 2 ** 32], "eval_every": [-1], "eval_batch_size": [0],
    "recall_k": [[1, 0]], "keep_checkpoints": [0], "max_images": [-1],
}


def _numeric_fields():
    """Fields holding numbers: numeric defaults, lists of numbers, and the two lists of numbers
    whose default is empty."""
    import dataclasses
    out = {}
    for f in dataclasses.fields(Config):
        default = getattr(Config(), f.name)
        items = default if isinstance(default, list) else [default]
        if f.name in ("head_dims", "recall_k") or (
                items and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items)):
            out[f.name] = default
    return out


def test_every_numeric_field_has_out_of_range_values():
    assert set(OUT_OF_RANGE) == set(_numeric_fields())


def _flag_named(name):
    return rf"--{name}[ =]"


@pytest.mark.parametrize("name, bad", [(n, v) for n, vs in OUT_OF_RANGE.items() for v in vs])
def test_out_of_range_numbers_are_refused_naming_the_flag(name, bad):
    with pytest.raises(ConfigError, match=_flag_named(name)):
        Config(**{name: bad}).validate()


def _is_float_field(default):
    items = default if isinstance(default, list) else [default]
    return bool(items) and isinstance(items[0], float)


@pytest.mark.parametrize("name", [n for n, d in _numeric_fields().items() if _is_float_field(d)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_are_refused_for_every_float_field(name, bad):
    default = getattr(Config(), name)
    value = [bad] + default[1:] if isinstance(default, list) else bad
    with pytest.raises(ConfigError, match=_flag_named(name)):
        Config(**{name: value}).validate()


def test_range_boundaries_that_are_allowed():
    """The edges each range includes: zero weights, decay, margins, warm-up, eval_every and
    steps_per_epoch; fc_lr's -1 (share --lr); the whole cosine range of the MS base."""
    Config(diva_alpha_ssl=0.0, diva_alpha_shared=0.0, diva_alpha_intra=0.0, decay=0.0,
           loss_margin_margin=0.0, warmup_epochs=0, eval_every=0, steps_per_epoch=0, max_images=0,
           fc_lr=-1.0, loss_ms_base=-1.0, diva_moco_momentum=0.0, seed=2 ** 32 - 1,
           diva_rho_decorrelation=[0.0, 0.0, 0.0], keep_checkpoints=1).validate()
    Config(loss_ms_base=1.0, val_classes_fraction=0.0).validate()


def test_dance_cutoffs_must_be_ordered():
    with pytest.raises(ConfigError, match="--diva_moco_upper_cutoff=0.4 must be above "
                                          "--diva_moco_lower_cutoff=0.5"):
        Config(diva_moco_upper_cutoff=0.4).validate()


def test_head_weight_combinations_must_be_finite():
    with pytest.raises(ConfigError, match="head weights 'nan,1': need finite"):
        parse_weights("nan,1", 2)
    with pytest.raises(ConfigError, match="head weights '1,inf'"):
        parse_weights("1,inf", 2)


def test_missing_backbone_weights_file_is_refused_before_data(tmp_path):
    missing = str(tmp_path / "nope.h5")
    with pytest.raises(ConfigError, match=f"--backbone_weights='{missing}': no such file"):
        Config(backbone_weights=missing).validate()
    present = tmp_path / "w.h5"
    present.write_bytes(b"")
    for ok in ("imagenet", "none", str(present)):
        Config(backbone_weights=ok).validate()
    r = _train(f"--data_dir={tmp_path / 'missing'}", f"--workdir={tmp_path}/w",
               f"--backbone_weights={missing}")
    assert (r.returncode, r.stderr) == (2, f"error: --backbone_weights='{missing}': no such file\n")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("value, message", [("-1", "--lr must be > 0 (got -1.0)"),
                                            ("nan", "--lr=nan: must be a finite number (> 0)"),
                                            ("inf", "--lr=inf: must be a finite number (> 0)")])
def test_cli_refuses_a_bad_learning_rate_before_reading_data(tmp_path, value, message):
    r = _train(f"--data_dir={tmp_path / 'missing'}", f"--workdir={tmp_path}/w", f"--lr={value}")
    assert (r.returncode, r.stderr) == (2, f"error: {message}\n")
    assert not (tmp_path / "w").exists()
