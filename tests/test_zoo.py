"""Released models by name (`zoo:NAME`, `tpn zoo`) against a local HTTP server started here: a
synthetic checkpoint in mmaction2's layout served from a temp folder through `TPN_ZOO_MIRROR`."""
import hashlib
import http.server
import re
import socket
import threading

import pytest
import torch

import tpn
from tpn import zoo
from tpn.cli import main
from tpn.config import load_config
from tpn.errors import TpnError
from tpn.models.build import build_model

# tpn names -> mmaction2 1.x names (the inverse of tpn.convert.mappings.MMACTION2)
TO_MMACTION2 = [
    (r"^head\.fc\.", "cls_head.fc_cls."),
    (r"^aux_head\.", "neck.aux_head."),
    (r"^neck\.spatial\.", "neck.spatial_modulation.spatial_modulation."),
    (r"^neck\.temporal\.", "neck.temporal_modulation_ops."),
    (r"^neck\.bottom_up\.(\d+)\.", r"neck.downsample_ops.\1.conv.conv."),
    (r"^neck\.top_down_fusion\.branches\.(\d+)\.", r"neck.level_fusion_1.downsamples.\1.conv."),
    (r"^neck\.top_down_fusion\.fuse\.", "neck.level_fusion_1.fusion_conv."),
    (r"^neck\.bottom_up_fusion\.branches\.(\d+)\.", r"neck.level_fusion_2.downsamples.\1.conv."),
    (r"^neck\.bottom_up_fusion\.fuse\.", "neck.level_fusion_2.fusion_conv."),
]


def mmaction2_names(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        for pattern, repl in TO_MMACTION2:
            if re.search(pattern, k):
                k = re.sub(pattern, repl, k, count=1)
                break
        out[k] = v
    return out


class Handler(http.server.SimpleHTTPRequestHandler):
    requests: list = []
    truncate = False

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).requests.append(self.path)
        if not type(self).truncate:
            return super().do_GET()
        data = open(self.translate_path(self.path), "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 3])  # then the connection closes mid-file


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(the model's tpn state_dict, its ZooModel `tiny`, the request log, the handler class):
    a tpn_tiny_synth model saved in mmaction2's layout, published under a sha256-prefixed name."""
    torch.manual_seed(3)
    model = build_model(load_config("tpn_tiny_synth"))
    site = tmp_path / "site"
    folder = site / "mmaction/v1.0/recognition/tpn/tiny"
    folder.mkdir(parents=True)
    tmp = folder / "tmp.pth"
    torch.save({"meta": {"mmaction2_version": "1.0.0"}, "state_dict": mmaction2_names(model.state_dict())}, tmp)
    sha = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    tmp.rename(folder / f"tiny_20220913-{sha}.pth")
    entry = zoo.ZooModel("tiny", "tiny-mmaction2", f"{zoo.OPENMMLAB}mmaction/v1.0/recognition/tpn/tiny/"
                         f"tiny_20220913-{sha}.pth", sha, "tpn_tiny_synth", "synthetic", 50.0, 90.0, "1 clip x 1 crop",
                         "small")
    monkeypatch.setitem(zoo.MODELS, "tiny", entry)
    handler = type("H", (Handler,), {"requests": [], "truncate": False})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             lambda *a: handler(*a, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("TPN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TPN_ZOO_MIRROR", f"http://127.0.0.1:{server.server_address[1]}/")
    handler.site = site
    yield model.state_dict(), entry, handler
    server.shutdown()
    server.server_close()


def test_zoo_name_downloads_checks_converts_once_then_hits_the_cache(served, tmp_path, capsys, caplog):
    sd, entry, handler = served
    with caplog.at_level("WARNING", logger="tpn.zoo"):
        model = tpn.load_model("tpn_tiny_synth", checkpoint="zoo:tiny")
    raw, converted = zoo.paths(entry)
    assert "zoo:tiny: downloading http://127.0.0.1:" in caplog.text and f" to {raw}" in caplog.text  # no silent download
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    assert raw.is_file() and converted.is_file() and handler.requests == [entry.url[len(zoo.OPENMMLAB) - 1:]]
    assert torch.load(converted, weights_only=True)["format"] == "tpn"
    assert not list(raw.parent.glob("*.part"))
    # cache hit: the CLI (convert) and the publisher's name, no second request
    dst = tmp_path / "out.pth"
    assert main(["convert", "zoo:tiny-mmaction2", str(dst), "--config", "tpn_tiny_synth"]) == 0
    assert dst.is_file() and len(handler.requests) == 1
    assert main(["zoo"]) == 0
    assert "zoo:tiny  (cached)" in capsys.readouterr().out


def test_a_file_placed_by_hand_is_used_without_a_request(served):
    _sd, entry, handler = served
    raw, _converted = zoo.paths(entry)
    raw.parent.mkdir(parents=True)
    raw.write_bytes((handler.site / entry.url[len(zoo.OPENMMLAB):]).read_bytes())
    assert zoo.resolve_checkpoint("zoo:tiny").is_file() and handler.requests == []


def test_hash_mismatch_deletes_the_file_and_says_so(served, monkeypatch):
    _sd, entry, _handler = served
    monkeypatch.setitem(zoo.MODELS, "tiny", zoo.ZooModel(**{**entry.__dict__, "sha256": "deadbeef"}))
    raw, converted = zoo.paths(entry)
    with pytest.raises(TpnError, match=r"^zoo:tiny: .* has sha256 [0-9a-f]{8}\.\.\., not the published deadbeef: "
                                       r"deleted it") as e:
        zoo.resolve("tiny")
    assert "\n" not in str(e.value)
    assert not raw.exists() and not converted.exists()


def test_interrupted_transfer_leaves_no_partial_file(served):
    _sd, entry, handler = served
    handler.truncate = True
    with pytest.raises(TpnError, match=r"^zoo:tiny: the download of http://127\.0\.0\.1:\d+/\S+ stopped .*"
                                       r"place it at \S+\.pth$") as e:
        zoo.resolve("tiny")
    assert "\n" not in str(e.value)
    raw, converted = zoo.paths(entry)
    assert list(raw.parent.iterdir()) == [] and not converted.exists()


def test_offline_is_one_line_naming_the_url_and_the_path(served, monkeypatch, capsys):
    _sd, entry, _handler = served
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TPN_ZOO_MIRROR", f"http://127.0.0.1:{port}")
    raw, _converted = zoo.paths(entry)
    assert main(["zoo", "--fetch", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    url = f"http://127.0.0.1:{port}/{entry.url[len(zoo.OPENMMLAB):]}"
    assert err.startswith(f"tpn: error: zoo:tiny: cannot download {url} (")
    assert err.endswith(f"download it by hand and place it at {raw}")
    assert not raw.exists() and not list(raw.parent.glob("*.part"))


def test_unknown_name_lists_the_zoo():
    with pytest.raises(TpnError, match=r"zoo:nope: no such released model; known: tpn_r50_8x8_k400_mmaction2"):
        zoo.resolve_checkpoint("zoo:nope")


def test_the_table_holds_mmaction2s_published_tpn_models():
    by_source = {m.source_name: m for m in zoo.MODELS.values()}
    k400 = by_source["tpn-slowonly_imagenet-pretrained-r50_8xb8-8x8x1-150e_kinetics400-rgb"]
    assert (k400.top1, k400.config, k400.sha256) == (76.74, "tpn_r50_8x8_k400", "fed3f4c1")
    assert by_source["tpn-slowonly_r50_8xb8-8x8x1-150e_kinetics400-rgb"].top1 == 74.20
    assert by_source["tpn-tsm_imagenet-pretrained-r50_8xb8-1x1x8-150e_sthv1-rgb"].top1 == 51.87
    for m in zoo.MODELS.values():
        assert m.filename.endswith(f"-{m.sha256}.pth") and m.url.startswith("https://download.openmmlab.com/")
        load_config(m.config)


def test_tpn_zoo_prints_config_published_accuracy_views_size_and_licence(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TPN_HOME", str(tmp_path))
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    k400 = zoo.MODELS["tpn_r50_8x8_k400_in1k_mmaction2"]
    block = out.split(f"zoo:{k400.name}  (not downloaded)\n", 1)[1].split("\nzoo:", 1)[0]
    assert f"config {k400.config}; {k400.dataset} top-1 76.74 / top-5 {k400.top5:.2f} ({k400.views}, published)" in block
    assert f"({k400.size}; sha256 {k400.sha256}...)" in block and k400.size and k400.views
    assert f"licence: {k400.licence}" in block and k400.licence
    assert out.count("zoo:") >= len(zoo.MODELS) and f"cache: {tmp_path}" in out


def test_predict_and_fine_tuning_take_a_zoo_name(served, tmp_path, capsys):
    """`tpn predict --checkpoint zoo:NAME` on a real video; `model.init_from`'s reader
    (`init_from`) with a zoo name into a model of another class count: one download for both."""
    import numpy as np

    from tpn.convert.weights import init_from
    from tpn.data.synthetic import render, write_mp4

    sd, _entry, handler = served
    video = tmp_path / "v.mp4"
    write_mp4(video, render("right_slow", (96, 80), 40, np.random.default_rng(0)))
    code = main(["predict", str(video), "--config", "tpn_tiny_synth", "--checkpoint", "zoo:tiny", "--views", "1x1",
                 "--device", "cpu", "--topk", "2"])
    out = capsys.readouterr().out
    assert code == 0 and out.splitlines()[0] == str(video) and len(out.splitlines()) == 3
    other = build_model(load_config("tpn_tiny_synth", ["model.head.num_classes=3"]))
    info = init_from(other, "zoo:tiny")
    assert "head.fc.weight" in info["reinit"]
    assert torch.equal(other.state_dict()["backbone.conv1.conv.weight"], sd["backbone.conv1.conv.weight"])
    assert len(handler.requests) == 1
