import pytest

from tpn.config import ConfigError, available_configs, dump_config, load_config


def test_shipped_configs_load():
    names = available_configs()
    for required in ["tpn_r50_8x8_k400", "tpn_r50_16x4_k400", "tpn_r50_32x2_k400", "tpn_r101_8x8_k400",
                     "slowonly_r50_8x8_k400"]:
        assert required in names
    for name in names:
        cfg = load_config(name)
        assert cfg.name == name


def test_overrides_are_typed():
    cfg = load_config("tpn_r50_8x8_k400", ["model.neck.flow=parallel", "train.lr=0.02",
                                           "model.neck.temporal_scales=[4,4]", "model.backbone.with_cp=true"])
    assert cfg.model.neck.flow == "parallel"
    assert cfg.train.lr == 0.02
    assert cfg.model.neck.temporal_scales == (4, 4)
    assert cfg.model.backbone.with_cp is True


@pytest.mark.parametrize("override,needle", [
    ("model.neck.flw=parallel", "unknown config key 'model.neck.flw'; allowed here: enabled, flow"),
    ("model.neck.flow=paralel", "must be one of 'cascade', 'parallel'"),
    ("train.epochs=1.5", "'train.epochs' must be an integer"),
    ("model.backbone.depth=34", "'model.backbone.depth' must be one of 50, 101"),
    ("train.lr", "expected KEY=VALUE"),
])
def test_bad_override_is_one_line_error(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config("tpn_r50_8x8_k400", [override])
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_yaml_key_names_the_file(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("model:\n  neck:\n    flow: cascade\n  heed:\n    num_classes: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "'model.heed'" in msg and "head" in msg


def test_missing_config_lists_shipped(tmp_path):
    with pytest.raises(ConfigError, match="shipped: .*tpn_r50_8x8_k400"):
        load_config("tpn_r50_9x9")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_dump_roundtrip(tmp_path):
    cfg = load_config("tpn_r50_16x4_k400", ["model.neck.flow=parallel"])
    p = tmp_path / "dumped.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(p) == cfg
