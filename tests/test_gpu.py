"""GPU paths against fp32 (skipped without CUDA; run on the device machine).

The fast paths (bf16 autocast, channels_last_3d, torch.compile, CUDA graphs, BN folding with
bf16 weights, augmentation on the device) must give the numbers of the plain fp32 model up
to bf16 rounding.
"""
import pytest
import torch

from tpn.accel import Execution, make_eval_forward, make_forward
from tpn.config import load_config
from tpn.data.transforms import apply_augment, draw_augment
from tpn.models.build import build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def model_with_stats(cfg):
    torch.manual_seed(0)
    model = build_model(cfg).cuda()
    with torch.no_grad():  # non-trivial BN statistics, so folding has something to fold
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.8, 1.2)
                m.weight.uniform_(0.8, 1.2)
    return model.eval()


def rel_err(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("compile_mode", [True, "reduce-overhead"])
def test_test_forward_matches_fp32(compile_mode):
    cfg = load_config("tpn_r50_8x8_k400", ["model.head.num_classes=10"])
    model = model_with_stats(cfg)
    x8 = torch.randint(0, 255, (6, 3, 8, 128, 128), dtype=torch.uint8, device="cuda",
                       generator=torch.Generator("cuda").manual_seed(0))
    with torch.no_grad():
        ref = make_eval_forward(model, cfg.data.mean, cfg.data.std)(x8)
        fast = make_eval_forward(model, cfg.data.mean, cfg.data.std, Execution(torch.bfloat16, True, compile_mode),
                                 fold_bn=True)
        got = fast(x8)
        got = fast(x8)  # second call: the compiled (and, with CUDA graphs, replayed) path
    assert got.shape == ref.shape
    assert rel_err(got, ref) < 0.03
    assert torch.allclose(got.float().softmax(-1), ref.softmax(-1), atol=0.02)


def train_logits(cfg, x8, amp, channels_last, compile_model):
    """Train-mode logits (BN on batch statistics, dropout off) of the same initialised model."""
    model = model_with_stats(cfg).train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    ex = Execution(torch.bfloat16 if amp else None, channels_last, compile_model)
    fwd = make_forward(model, cfg.data.mean, cfg.data.std, ex)
    out = fwd(x8).float()
    torch._dynamo.reset()
    return out


def test_train_forward_matches_eager():
    """channels_last_3d + compile change no number in fp32; in bf16 they are as close to fp32
    as plain eager autocast. (Measured on an H100, batch 8 at 224: fp32 compiled vs eager 0.0000
    relative; bf16 eager vs fp32 0.21, bf16 compiled vs fp32 0.19. Train-mode BN on a random
    network fed with noise amplifies bf16 rounding; the eval paths above agree to 3%.)"""
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = False, False
    cfg = load_config("tpn_r50_8x8_k400", ["model.head.num_classes=10"])
    x8 = torch.randint(0, 255, (8, 3, 8, 224, 224), dtype=torch.uint8, device="cuda",
                       generator=torch.Generator("cuda").manual_seed(1))
    ref = train_logits(cfg, x8, amp=False, channels_last=False, compile_model=False)
    fp32_fast = train_logits(cfg, x8, amp=False, channels_last=True, compile_model=True)
    assert rel_err(fp32_fast, ref) < 1e-3
    bf16_eager = train_logits(cfg, x8, amp=True, channels_last=False, compile_model=False)
    bf16_fast = train_logits(cfg, x8, amp=True, channels_last=True, compile_model=True)
    assert rel_err(bf16_fast, ref) < 1.5 * rel_err(bf16_eager, ref) + 0.02


def test_augment_on_device_equals_cpu():
    gen = __import__("numpy").random.default_rng(0)
    x = torch.randint(0, 255, (6, 3, 4, 32, 32), dtype=torch.uint8)
    aug = torch.stack([draw_augment(gen, 0.5, True) for _ in range(6)])
    cpu = apply_augment(x, aug)
    gpu = apply_augment(x.cuda(), aug).cpu()
    assert (cpu.int() - gpu.int()).abs().max() <= 1


def _nvdec_missing():
    from tpn.data.nvdec import nvdec_available

    return nvdec_available(torch.device("cuda")) if torch.cuda.is_available() else "needs a CUDA GPU"


@pytest.mark.skipif(bool(_nvdec_missing()), reason="needs NVDEC (PyNvVideoCodec)")
def test_nvdec_stream_equals_pyav_stand_in():
    """Jobs of B-frame H.264 and open-GOP HEVC files streamed into NVDEC (4 threads, decoders reused
    across videos) give the frames FFmpeg's decoder gives for the same packets, RGB byte for byte; and
    the decode process (its own CUDA context) hands back clips equal to the CPU path's."""
    from tests.test_data_nvdec import _jobs
    from tpn.data import nvdec
    from tpn.data.synthetic import render, write_mp4
    import tempfile
    from pathlib import Path

    import numpy as np

    with tempfile.TemporaryDirectory() as d:
        paths = []
        for i, codec in enumerate(("h264", "hevc", "h264")):
            p = Path(d) / f"v{i}.mp4"
            write_mp4(p, render("right_slow", (160, 144), 120, np.random.default_rng(i)), preset="medium", codec=codec)
            paths.append(p)
        jobs = _jobs(paths, 24)
        gpu = nvdec.DecoderPool(torch.device("cuda"), 4).decode(jobs)
        cpu = nvdec.DecoderPool(torch.device("cpu"), 1, nvdec.PyAVStream).decode(jobs)
        torch.cuda.synchronize()
        for slot, job in jobs:
            assert isinstance(gpu[slot], torch.Tensor), gpu[slot]
            assert torch.equal(gpu[slot].cpu(), cpu[slot]), job.path
        process = nvdec.DecodeProcess(torch.device("cuda"), "nvdec", 4)
        try:
            clips = process.decode(jobs)
        finally:
            process.close()
        for slot, job in jobs:
            assert clips[slot].is_cuda and torch.equal(clips[slot].cpu(), nvdec.clips_from_frames(cpu[slot], job))


@pytest.mark.skipif(bool(_nvdec_missing()), reason="needs NVDEC (PyNvVideoCodec)")
def test_training_with_nvdec(tmp_path):
    from tests.test_engine_common import data_overrides, TINY
    from tpn.data.synthetic import generate_dataset
    from tpn.engine.train import train

    generate_dataset(tmp_path / "d", classes=4, videos_per_class=6, size=(96, 64), frames=40, preset="medium",
                     workers=2)
    cfg = load_config("tpn_tiny_synth", TINY + data_overrides(tmp_path / "d") + [
        "data.decoder=nvdec", "data.num_workers=2", "train.epochs=1", "train.val_interval=0", "train.batch_size=4"])
    s = train(cfg, tmp_path / "run", device="cuda")
    assert s["epochs"][0]["decode"]["gpu_clips"] > 0 and s["epochs"][0]["decode"]["fallbacks"] == 0


@pytest.mark.parametrize("compiled", [False, True])
def test_fused_bn_kernels_on_the_gpu(compiled):
    """train.fused_bn's Triton kernels compiled for the GPU (eager and inside torch.compile): fp32
    equal to torch's BatchNorm -> add -> ReLU (output, all gradients, running statistics); bf16
    output within half a bf16 step of the fp32 result (rounded once, to nearest)."""
    from tpn.models import fused_bn

    torch.manual_seed(0)
    fn = torch.compile(fused_bn.bn_act, dynamic=False) if compiled else fused_bn.bn_act
    for shape in [(4, 96, 8, 28, 28), (3, 70, 5, 9, 9), (16, 64, 28, 28)]:  # the last: TSM's 2D frames
        kind, fmt = ((torch.nn.BatchNorm3d, torch.channels_last_3d) if len(shape) == 5
                     else (torch.nn.BatchNorm2d, torch.channels_last))
        bn, ref = kind(shape[1]).cuda(), kind(shape[1]).cuda()
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
        ref.load_state_dict(bn.state_dict())
        leaf = lambda s: (torch.randn(shape, device="cuda") * s + 1).contiguous(  # noqa: E731
            memory_format=fmt).requires_grad_()
        x, r = leaf(3.0), leaf(1.0)
        x2, r2 = (t.detach().clone().requires_grad_() for t in (x, r))
        y = fn(x, bn, r, True)
        y2 = torch.relu(ref(x2) + r2)
        dy = torch.randn_like(y2)
        y.backward(dy)
        y2.backward(dy)
        for a, b in [(y, y2), (x.grad, x2.grad), (r.grad, r2.grad), (bn.running_mean, ref.running_mean),
                     (bn.running_var, ref.running_var)]:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        for a, b in [(bn.weight.grad, ref.weight.grad), (bn.bias.grad, ref.bias.grad)]:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-2)  # sums over ~10^5 rows
        xb, rb = x.detach().bfloat16(), r.detach().bfloat16()
        yb = fn(xb, bn, rb, True)
        exact = torch.relu(torch.nn.functional.batch_norm(xb.float(), None, None, bn.weight, bn.bias, True) + rb.float())
        assert ((yb.float() - exact).abs() <= exact.abs() * 2**-8 + 1e-3).all()
