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


@pytest.mark.parametrize("override,needle", [
    ("train.batch_size=0", "--set: config key 'train.batch_size' must be >= 1, got 0"),
    ("data.clip_len=-8", "'data.clip_len' must be >= 1, got -8"),
    ("data.frame_interval=0", "'data.frame_interval' must be >= 1, got 0"),
    ("train.epochs=0", "'train.epochs' must be >= 1"),
    ("model.neck.out_channels=0", "'model.neck.out_channels' must be >= 1"),
    ("model.backbone.base_channels=-64", "'model.backbone.base_channels' must be >= 1"),
    ("train.lr=-0.1", "'train.lr' must be >= 0, got -0.1"),
    ("train.lr=.nan", "'train.lr' must be >= 0, got nan"),
    ("data.num_workers=-1", "'data.num_workers' must be >= 0, got -1"),
    ("data.test_clips=0", "'data.test_clips' must be >= 1"),
    ("model.head.dropout=1", "'model.head.dropout' must be in [0, 1), got 1.0"),
    ("data.flip=1.5", "'data.flip' must be in [0, 1], got 1.5"),
    ("data.std=[58,0,57]", "'data.std[1]' must be > 0, got 0.0"),
    ("model.backbone.out_indices=[2,4]", "'model.backbone.out_indices[1]' must be in [0, 3], got 4"),
    ("model.head.num_classes=0", "'model.head.num_classes' must be >= 1, got 0"),
    ("test.batch_size=0", "'test.batch_size' must be >= 1"),
])
def test_numeric_values_out_of_range_are_one_line_errors(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config("tpn_tiny_synth", [override])
    assert needle in str(e.value) and str(e.value).startswith("--set: ") and "\n" not in str(e.value)


def test_every_numeric_field_has_a_range():
    import dataclasses
    import typing

    from tpn.config import RANGES, Config

    def numeric(tp) -> bool:
        args = [a for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis]
        return tp in (int, float) or any(numeric(a) for a in args)

    def fields(cls, prefix=""):
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(tp):
                yield from fields(tp, f"{prefix}{f.name}.")
            elif numeric(tp):
                yield f"{prefix}{f.name}"

    assert sorted(set(fields(Config)) - set(RANGES)) == []
    assert sorted(set(RANGES) - set(fields(Config))) == []


def test_a_range_error_names_the_file_and_set_can_fix_it(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("train:\n  batch_size: 0\n")
    with pytest.raises(ConfigError, match=rf"^{p}: config key 'train.batch_size' must be >= 1, got 0$"):
        load_config(p)
    assert load_config(p, ["train.batch_size=2"]).train.batch_size == 2
    assert load_config(p, ["train={batch_size: 3}"]).train.batch_size == 3


def test_lr_in_exponent_notation_is_a_number():
    assert load_config("tpn_tiny_synth", ["train.lr=1e-3"]).train.lr == 0.001


def test_duplicate_yaml_keys_are_refused(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("train:\n  lr: 0.1\n  epochs: 3\n  lr: 0.2\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value) == f"{p}:4:3: duplicate key 'lr' (first given on line 2)"
    p.write_text("train: {epochs: 3}\ntrain: {epochs: 4}\n")
    with pytest.raises(ConfigError, match=r":2:1: duplicate key 'train' \(first given on line 1\)"):
        load_config(p)


@pytest.mark.parametrize("text,where,problem", [
    ("train:\n  lr: 0.1\n\tepochs: 3\n", ":3:1: ", "found character '\\t' that cannot start any token"),
    ("train: {lr: 0.1, milestones: [3}\n", ":1:32: ", "expected ',' or ']', but got '}'"),
    ("train:\n  lr: 0.1\n epochs: 3\n", ":3:2: ", "expected <block end>, but found '<block mapping start>'"),
])
def test_yaml_syntax_errors_give_file_line_and_column(tmp_path, text, where, problem):
    p = tmp_path / "broken.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}{where}{problem}") and "\n" not in msg, msg


def test_a_batch_that_does_not_hold_whole_videos_is_refused_at_load():
    # was found only by the loader, after `tpn train --overwrite` had deleted the earlier run
    with pytest.raises(ConfigError, match=r"^--set / \S*tpn_tiny_synth.yaml: train.batch_size \(8\) must be a multiple of "
                                          r"data.clips_per_decode \(3\)$"):
        load_config("tpn_tiny_synth", ["data.clips_per_decode=3"])
    assert load_config("tpn_tiny_synth", ["data.clips_per_decode=4"]).data.clips_per_decode == 4


@pytest.mark.parametrize("override,needle", [
    # each value in its range, each failing deep inside before: numpy's seed, a grouped conv, a crop
    ("train.seed=4294967296", "--set: config key 'train.seed' must be in [0, 2147483647], got 4294967296"),
    ("model.neck.groups=5", "model.neck.groups (5) must divide model.neck.out_channels (64) and the backbone's last "
                            "output channels (256 = model.backbone.base_channels 8 x 2^3 x 4)"),
    ("model.neck.out_channels=60", "model.neck.groups (8) must divide model.neck.out_channels (60)"),
    ("model.neck={out_channels: 512, groups: 512}", "model.neck.groups (512) must divide model.neck.out_channels "
                                                   "(512) and the backbone's last output channels (256 = "),
    ("data.crop_size=80", "data.crop_size (80) is larger than the resized frame (its short side is "
                          "data.short_side, 72)"),
    ("data.test_crop_size=73", "data.test_crop_size (73) is larger than the resized frame"),
])
def test_values_in_range_that_would_fail_inside_a_run_are_refused_at_load(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config("tpn_tiny_synth", [override])
    msg = str(e.value)
    assert needle in msg and "--set" in msg.split(": ")[0] and "\n" not in msg, msg  # names where the values came from
    assert load_config("tpn_tiny_synth", ["train.seed=2147483647", "model.neck.groups=16"]).train.seed == 2**31 - 1


def test_a_config_path_that_is_a_directory(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: is a directory, not a config file"):
        load_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tpn_tiny_synth").mkdir()  # a folder named like a shipped config does not hide it
    assert load_config("tpn_tiny_synth").name == "tpn_tiny_synth"
    (tmp_path / "mine.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"^mine.yaml: is a directory, not a config file"):
        load_config("mine.yaml")


def test_yaml_alias_bombs_are_refused_and_plain_aliases_still_work(tmp_path):
    import time

    levels = [f"&l0 [{', '.join(['lol'] * 9)}]"] + [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb = f"[{', '.join(levels)}]"  # 9^9 (387 million) values in 9 short lines
    p = tmp_path / "bomb.yaml"
    p.write_text(f"name: {bomb}\n")
    t = time.time()
    with pytest.raises(ConfigError, match=rf"^{p}: its YAML aliases expand to more than 100,000 values"):
        load_config(p)  # before: the error message's repr of the name walked all of them (no end in sight)
    with pytest.raises(ConfigError, match=r"^--set name: its YAML aliases expand to more than 100,000 values"):
        load_config("tpn_tiny_synth", [f"name={bomb}"])
    assert time.time() - t < 5
    p.write_text("name: &a [*a]\n")
    with pytest.raises(ConfigError, match=rf"^{p}: an alias refers to a value that contains it$"):
        load_config(p)
    p.write_text("data: {mean: &m [1, 2, 3], std: *m}\n")
    assert load_config(p).data.std == (1.0, 2.0, 3.0)
