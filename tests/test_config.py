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

    from diva_tf.flags import config_from_flags, define_flags

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
