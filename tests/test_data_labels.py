"""`model.head.num_classes` against the label map and the list labels, before any training."""
import logging

import pytest

from tests.test_engine_common import TINY, cli, data_overrides, sets, tempo_data, tiny_cfg  # noqa: F401
from tpn.config import ConfigError
from tpn.data.labels import resolve_num_classes


def test_null_num_classes_is_taken_from_the_label_map_and_logged(tempo_data, caplog):  # noqa: F811
    cfg = tiny_cfg(tempo_data, ["model.head.num_classes=null"])
    assert cfg.model.head.num_classes is None
    with caplog.at_level(logging.INFO, logger="tpn"):
        assert resolve_num_classes(cfg).model.head.num_classes == 4
    assert f"model.head.num_classes not set: 4 classes from the label map {tempo_data}/labels.txt" in caplog.text
    with pytest.raises(ConfigError, match="num_classes is null .* but data.label_map is not set"):
        resolve_num_classes(tiny_cfg(tempo_data, ["model.head.num_classes=null", "data.label_map="]))


def test_num_classes_against_the_label_map_and_the_lists(tempo_data, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError) as e:
        resolve_num_classes(tiny_cfg(tempo_data, ["model.head.num_classes=400"]))
    assert str(e.value) == (f"model.head.num_classes is 400 but the label map {tempo_data}/labels.txt has 4 classes: "
                            "set it to 4, or to null to take it from the label map")
    lines = (tempo_data / "val.txt").read_text().splitlines()
    lines[3] = lines[3].rsplit(" ", 1)[0] + " 7"
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    cfg = tiny_cfg(tempo_data, ["data.label_map=", f"data.val_list={tmp_path}/val.txt"])
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/val.txt:4: label 7 is not below model.head.num_classes \(4\)"):
        resolve_num_classes(cfg)
    assert resolve_num_classes(cfg, ("train",)).model.head.num_classes == 4


def test_train_with_a_wrong_num_classes_stops_before_any_work(tempo_data, tmp_path):  # noqa: F811
    work = tmp_path / "run"
    r = cli("train", "tpn_tiny_synth", "--work-dir", str(work), "--device", "cpu",
            *sets(TINY + data_overrides(tempo_data, classes=10)))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "tpn: error: model.head.num_classes is 10 but the label map" in r.stderr
    assert not (work / "config.yaml").exists() and not list(work.glob("*.pth"))


def test_train_takes_null_num_classes_from_the_label_map(tempo_data, tmp_path):  # noqa: F811
    from tpn.config import load_config
    from tpn.engine.train import train

    cfg = tiny_cfg(tempo_data, ["model.head.num_classes=null", "train.epochs=1", "train.val_interval=0",
                                "data.num_workers=0"])
    s = train(cfg, tmp_path / "run", device="cpu", max_iters=1)
    assert s["model"].head.fc.out_features == 4
    assert load_config(tmp_path / "run" / "config.yaml").model.head.num_classes == 4  # the resolved number
