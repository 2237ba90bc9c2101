"""Engine pieces checked against hand-computed numbers: learning rate, decay groups, sampler, RNG, resume pick, metrics."""
import random

import numpy as np
import pytest
import torch

from tpn.checkpoint import CheckpointError, save_atomic
from tpn.config import ConfigError, load_config
from tpn.engine.checkpoint import find_resume, rng_state, set_rng_state
from tpn.engine.distributed import ShardedSampler
from tpn.engine.evaluate import metrics, parse_views
from tpn.engine.train import base_lr, lr_at, param_groups
from tpn.errors import TpnError
from tpn.models.build import build_model


def test_lr_scales_linearly_with_the_total_batch():
    cfg = load_config("tpn_r50_8x8_k400")  # lr 0.01 at batch 64
    assert base_lr(cfg, world=8) == pytest.approx(0.01)  # 8 GPUs x 8
    assert base_lr(cfg, world=2) == pytest.approx(0.0025)
    cfg = load_config("tpn_r50_8x8_k400", ["train.accum_steps=4"])
    assert base_lr(cfg, world=2) == pytest.approx(0.01)
    seed = load_config("tpn_r50_8x8_k400_seed")  # lr 0.01 at batch 128 = 8 GPUs x 16
    assert base_lr(seed, world=8) == pytest.approx(0.01)


def test_warmup_then_step_and_cosine():
    cfg = load_config("tpn_tiny_synth", ["train.schedule=step", "train.milestones=[2,4]", "train.gamma=0.1",
                                         "train.warmup_epochs=1", "train.epochs=6"])
    n = 10  # iterations per epoch
    assert lr_at(cfg, 0, n, 1.0) == pytest.approx(0.1)  # warm-up starts at lr / 10
    assert lr_at(cfg, 5, n, 1.0) == pytest.approx(0.55)
    assert lr_at(cfg, 10, n, 1.0) == pytest.approx(1.0)
    assert lr_at(cfg, 19, n, 1.0) == pytest.approx(1.0)
    assert lr_at(cfg, 20, n, 1.0) == pytest.approx(0.1)
    assert lr_at(cfg, 40, n, 1.0) == pytest.approx(0.01)
    cfg = load_config("tpn_tiny_synth", ["train.schedule=cosine", "train.warmup_epochs=0", "train.epochs=4"])
    assert lr_at(cfg, 0, n, 1.0) == pytest.approx(1.0)
    assert lr_at(cfg, 20, n, 1.0) == pytest.approx(0.5)
    assert lr_at(cfg, 40, n, 1.0) == pytest.approx(0.0, abs=1e-12)


def test_bn_and_bias_can_be_exempt_from_weight_decay():
    cfg = load_config("tpn_tiny_synth", ["train.decay_norm_and_bias=false"])
    model = build_model(cfg)
    decay, no_decay = param_groups(model, cfg)
    assert no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith(".bias") or ".bn." in names[id(p)] for p in no_decay["params"])
    assert all(p.dim() > 1 for p in decay["params"])  # conv and fc weights only
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert len(param_groups(model, load_config("tpn_tiny_synth"))) == 1


def test_sampler_shards_resumes_and_evaluates_each_item_once():
    full = [list(ShardedSampler(11, r, 2, shuffle=True, seed=5)) for r in range(2)]
    assert len(full[0]) == len(full[1]) == 6 and set(full[0] + full[1]) == set(range(11))  # padded by one
    s = ShardedSampler(11, 1, 2, shuffle=True, seed=5)
    s.set_epoch(0, start=4)
    assert list(s) == full[1][4:] and len(s) == 2
    s.set_epoch(1)
    assert list(s) != full[1]  # a new permutation each epoch
    ev = [list(ShardedSampler(11, r, 3, shuffle=False)) for r in range(3)]
    assert sorted(ev[0] + ev[1] + ev[2]) == list(range(11))  # no padding, no duplicates


def test_sampler_pads_a_set_smaller_than_the_ranks_so_every_rank_gets_the_same_count():
    for size, world in ((2, 5), (1, 4), (3, 8), (5, 2)):
        shards = [list(ShardedSampler(size, r, world, shuffle=True, seed=1)) for r in range(world)]
        assert {len(x) for x in shards} == {-(-size // world)}, (size, world, shards)
        assert set(sum(shards, [])) == set(range(size))


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    save_atomic({"rng": rng_state()}, tmp_path / "r.pth")
    a = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_state(torch.load(tmp_path / "r.pth", weights_only=True)["rng"])
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_resume_auto_takes_the_newest_readable_checkpoint(tmp_path):
    for name, it in [("epoch_0001.pth", 4), ("iter_00000006.pth", 6)]:
        save_atomic({"format": "tpn", "optimizer": {}, "global_iter": it}, tmp_path / name)
    (tmp_path / "iter_00000009.pth").write_bytes(b"PK\x03\x04 cut short")  # killed while copying, say
    ckpt, path = find_resume(tmp_path, "auto")
    assert path.name == "iter_00000006.pth" and ckpt["global_iter"] == 6
    assert find_resume(tmp_path / "empty", "auto") == (None, None)
    save_atomic({"format": "tpn", "state_dict": {}}, tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match="not a tpn training checkpoint"):
        find_resume(tmp_path, str(tmp_path / "weights.pth"))


def test_metrics_by_hand():
    p = lambda *v: np.array(v, dtype=np.float32)  # noqa: E731
    results = {0: (p(.7, .2, .1), 0, True), 1: (p(.1, .3, .6), 1, True), 2: (p(.2, .5, .3), 1, True),
               3: (p(.1, .1, .8), 2, True), 4: (p(1, 0, 0), 2, False)}  # 4 is a broken video: left out
    m = metrics(results, 3)
    assert m["videos"] == 4 and m["skipped"] == 1
    assert m["top1"] == pytest.approx(3 / 4)
    assert m["per_class_accuracy"] == {0: 1.0, 1: 0.5, 2: 1.0}
    assert m["mean_class_accuracy"] == pytest.approx(2.5 / 3)
    assert m["confusion"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert m["top5"] == 1.0


def test_views_argument():
    assert parse_views("10x3") == (10, 3) and parse_views("1X1") == (1, 1)
    for bad in ["10", "10x2", "ax3"]:
        with pytest.raises(TpnError, match="--views"):
            parse_views(bad)


def test_execution_policy_lives_in_one_place():
    from tpn.accel import Execution, execution

    cfg = load_config("tpn_tiny_synth", ["train.compile=true"])
    cuda = torch.device("cuda")  # a device name only: nothing runs
    assert execution(cfg.train, torch.device("cpu")) == Execution()  # fp32, no layout change, eager
    assert execution(cfg.train, cuda) == Execution(torch.bfloat16, True, True)
    assert not execution(cfg.train, cuda).loss_scaling
    fp16 = load_config("tpn_tiny_synth", ["train.amp_dtype=float16", "train.compile_mode=reduce-overhead",
                                          "train.compile=true", "train.channels_last=false"])
    assert execution(fp16.train, cuda) == Execution(torch.float16, False, "reduce-overhead")
    assert execution(fp16.train, cuda).loss_scaling
    assert execution(fp16.train, cuda, compile_model=False).compile is False
    assert execution(load_config("tpn_tiny_synth", ["train.amp=false"]).train, cuda).amp is None


def test_confusion_report_shows_rates_counts_and_the_most_confused_pairs():
    from tpn.engine.report import confusion_figure, most_confused

    names = ["a", "b", "c"]
    conf = np.array([[5, 3, 0], [0, 8, 0], [1, 0, 2]])
    assert most_confused(conf, names) == [{"true": "a", "predicted": "b", "videos": 3, "rate": 3 / 8},
                                          {"true": "c", "predicted": "a", "videos": 1, "rate": 1 / 3}]
    fig = confusion_figure(conf, names)
    heat, bar = fig.axes  # the heat map and its colour bar
    assert bar.get_ylabel() == "share of the true class's videos"
    assert sorted(t.get_text() for t in heat.texts) == ["1", "2", "3", "5", "8"]  # videos per non-empty cell
    assert heat.images[0].get_array().max() == 1.0  # rates: class b's row is all correct
    rng = np.random.default_rng(0)  # 400 classes: a heat map without names and a list of pairs
    big = np.diag(rng.integers(20, 50, 400))
    big[7, 9] = 30
    k400 = [f"class{i}" for i in range(400)]
    fig = confusion_figure(big, k400)
    heat, side, bar = fig.axes
    assert bar.get_ylabel() == "share of the true class's videos (square-root scale)"
    assert not heat.texts and heat.get_xlabel() == "predicted class (index)"  # no names, no numbers
    assert "class7 -> class9: 30" in side.texts[0].get_text()
    assert most_confused(big, k400, top=5) == [{"true": "class7", "predicted": "class9", "videos": 30,
                                               "rate": 30 / (30 + big[7, 7])}]


def test_rate_text_keeps_slow_rates_readable():
    from tpn.engine.report import rate_text

    assert rate_text(8, 41.3, "videos") == "8 videos in 41.3 s, 0.194 videos/s"
    assert rate_text(720, 11.6, "videos") == "720 videos in 11.6 s, 62.1 videos/s"
    assert rate_text(20000, 4.0, "clips") == "20000 clips in 4.0 s, 5000 clips/s"


def test_precision_and_inductor_tuning_switches():
    """test.precision picks the autocast dtype on any device (auto: the training execution's);
    train.inductor_tuning adds coordinate-descent tuning to the compile mode's inductor options."""
    from tpn.accel import Execution, compile_options, execution

    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # device names only: nothing runs
    t = load_config("tpn_tiny_synth").train
    import importlib.util

    eager_bn = importlib.util.find_spec("triton") is not None  # train.fused_bn: auto, without compile
    assert execution(t, cuda, precision="fp32") == Execution(None, True, False, fused_bn=eager_bn)
    assert execution(t, cuda, precision="fp16").amp == torch.float16
    assert execution(t, cpu, precision="bf16") == Execution(torch.bfloat16)  # CPU autocast, no layout change
    assert execution(t, cpu, precision="auto") == Execution()
    assert load_config("tpn_tiny_synth", ["test.precision=fp32"]).test.precision == "fp32"
    with pytest.raises(ConfigError, match="test.precision"):
        load_config("tpn_tiny_synth", ["test.precision=fp8"])
    tuned = load_config("tpn_tiny_synth", ["train.compile=true", "train.inductor_tuning=true",
                                           "train.compile_mode=reduce-overhead"]).train
    assert execution(tuned, cuda) == Execution(torch.bfloat16, True, "reduce-overhead", True)
    assert execution(tuned, cuda, compile_model=False).inductor_tuning is False  # tuning needs compile
    assert execution(tuned, cpu) == Execution()
    assert compile_options(execution(tuned, cuda)) == {
        "options": {"triton.cudagraphs": True, "coordinate_descent_tuning": True}}
    assert compile_options(Execution(compile=True, inductor_tuning=True)) == {
        "options": {"coordinate_descent_tuning": True}}
    assert compile_options(Execution(compile="reduce-overhead")) == {"mode": "reduce-overhead"}
    assert compile_options(Execution(compile="reduce-overhead", gemm_tuning=True)) == {  # test.gemm_tuning
        "options": {"triton.cudagraphs": True, "max_autotune": True, "conv_1x1_as_mm": True}}
    assert load_config("tpn_tiny_synth").test.gemm_tuning is False
    assert compile_options(Execution(compile=True)) == {"mode": None}


def test_activation_budget_is_in_force_while_the_graph_compiles(monkeypatch):
    """train.activation_budget reaches torch's activation memory budget during every call of the
    compiled forward (graphs compile inside a call), and only with compile; 0 and values over 1
    are refused with the field's name."""
    import torch._functorch.config as functorch_config

    from tpn.accel import Execution, execution, make_forward

    seen = []

    def fake_compile(fn, **kwargs):  # records the budget torch.compile would partition with
        def run(*args):
            seen.append(functorch_config.activation_memory_budget)
            return fn(*args)
        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = torch.nn.Conv3d(3, 4, 1)
    x8 = torch.randint(0, 255, (1, 3, 2, 4, 4), dtype=torch.uint8)
    for budget in (0.4, 1.0):
        out = make_forward(model, (0, 0, 0), (1, 1, 1), Execution(compile=True, activation_budget=budget))(x8)
        assert out.shape == (1, 4, 2, 4, 4) and seen[-1] == budget
    assert functorch_config.activation_memory_budget == 1.0  # restored after the call
    cuda = torch.device("cuda")  # a device name only: nothing runs
    t = load_config("tpn_tiny_synth", ["train.compile=true", "train.activation_budget=0.5"]).train
    assert execution(t, cuda).activation_budget == 0.5
    assert not execution(t, cuda).fused_bn  # auto: inductor's kernels under compile
    assert execution(t, cuda, compile_model=False).activation_budget == 1.0
    for bad in ("0", "1.5"):
        with pytest.raises(ConfigError, match="train.activation_budget"):
            load_config("tpn_tiny_synth", [f"train.activation_budget={bad}"])


def test_fused_bn_switch(monkeypatch):
    """train.fused_bn: auto turns the Triton BN kernels on for eager CUDA training and off under
    compile and on the CPU; true forces them; without Triton, auto stays off and true is refused."""
    import importlib.util

    from tpn.accel import execution

    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # device names only: nothing runs
    eager, compiled = (load_config("tpn_tiny_synth", [f"train.compile={c}"]).train for c in ("false", "true"))
    forced = load_config("tpn_tiny_synth", ["train.compile=true", "train.fused_bn=true"]).train
    assert eager.fused_bn == "auto"
    found = importlib.util.find_spec("triton") is not None
    assert execution(eager, cuda).fused_bn == found and not execution(compiled, cuda).fused_bn
    assert not execution(eager, cpu).fused_bn
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a))
    assert not execution(eager, cuda).fused_bn
    with pytest.raises(ConfigError, match="train.fused_bn: true needs Triton"):  # one line from the CLI
        execution(forced, cuda)
    with pytest.raises(ConfigError, match="train.fused_bn"):
        load_config("tpn_tiny_synth", ["train.fused_bn=sometimes"])
