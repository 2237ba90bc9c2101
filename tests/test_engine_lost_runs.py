"""Lost or poisoned runs: a resume that finds nothing to resume in a used work dir refuses,
non-finite state is never saved or resumed, SIGTERM saves and releases the lock, a save cut
short by a kill is cleaned up, a full disk is one line and keeps the previous checkpoint."""
import errno
import io
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from tests.test_engine_common import TINY, data_overrides, free_port, sets, tempo_data, tiny_cfg  # noqa: F401
from tpn.checkpoint import save_atomic
from tpn.engine.checkpoint import find_resume
from tpn.engine.train import train
from tpn.errors import TpnError

FAST = ["train.epochs=1", "train.batch_size=8", "train.lr_batch_size=8", "train.val_interval=0",
        "data.num_workers=0"]  # 4 iterations


def test_resume_auto_refuses_a_used_dir_with_nothing_to_resume(tempo_data, tmp_path, caplog):  # noqa: F811
    cfg = tiny_cfg(tempo_data, FAST + ["train.val_interval=1"])
    work = tmp_path / "run"
    train(cfg, work, device="cpu")
    (work / "epoch_0001.pth").unlink()  # best.pth is left: --resume auto continues from epoch_/iter_ files only
    kept = {p.name: p.read_bytes() for p in work.iterdir() if p.name in ("best.pth", "metrics.jsonl")}
    with pytest.raises(TpnError, match=rf"{work} holds checkpoints of an earlier run \(best.pth\) but none that "
                                       r"--resume auto continues from .*--resume PATH.*--overwrite") as e:
        train(cfg, work, resume="auto", device="cpu")
    assert "\n" not in str(e.value)
    (work / "epoch_0002.pth").write_bytes(b"PK\x03\x04 cut short")  # only an unreadable one besides
    with pytest.raises(TpnError, match=r"\(best.pth, epoch_0002.pth\) but none that --resume auto continues"):
        train(cfg, work, resume="auto", device="cpu")
    assert "ignoring unreadable checkpoint" in caplog.text
    assert {n: (work / n).read_bytes() for n in kept} == kept and not (work / "tpn.lock").exists()

    # a new dir, and one whose run died before its first checkpoint, start afresh (elastic restarts, job scripts)
    caplog.clear()
    train(cfg, tmp_path / "new", resume="auto", device="cpu", max_iters=1)
    train(cfg, tmp_path / "new", resume="auto", device="cpu", max_iters=1)
    assert caplog.text.count(f"no training checkpoint in {tmp_path / 'new'}: starting from scratch") == 2


def nan_copy(src, dst):
    ckpt = torch.load(src, weights_only=True)
    ckpt["state_dict"]["head.fc.weight"][0, 0] = float("nan")
    ckpt["global_iter"] = 99
    save_atomic(ckpt, dst)


def test_non_finite_weights_are_never_saved_nor_resumed(tempo_data, tmp_path, caplog):  # noqa: F811
    work = tmp_path / "run"
    base = FAST + ["train.batch_size=2", "train.lr_batch_size=2"]  # 16 iterations an epoch
    train(tiny_cfg(tempo_data, base), work, device="cpu")
    good = work / "epoch_0001.pth"
    # the loss diverges between log lines (none until the epoch's last step), a checkpoint every step
    diverge = base + ["train.epochs=2", "train.lr=1e30", "train.clip_grad=0", "train.log_interval=100",
                      "train.ckpt_interval_iters=1"]
    with pytest.raises(TpnError, match=r"the weights are not finite at epoch 2 iteration \d+ \(the loss diverged "
                                       r"after the last log line\): iter_\d+.pth not saved; lower train.lr or check "
                                       rf"the data; the last good checkpoint is {work}/\S+.pth$") as e:
        train(tiny_cfg(tempo_data, diverge), work, resume="auto", device="cpu")
    last = str(e.value).rsplit(" ", 1)[1]
    assert find_resume(work, "auto")[1] == Path(last)  # the newest file there, and finite
    for p in work.glob("*.pth"):
        sd = torch.load(p, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point()), p
    # the NaN-loss stop names it too
    with pytest.raises(TpnError, match=rf"loss is (nan|inf) at epoch 2 iteration \d+: .*the last good checkpoint is "
                                       rf"{work}/(epoch|iter)_\d+.pth"):
        train(tiny_cfg(tempo_data, diverge[:-2] + ["train.log_interval=1"]), work, resume=str(good), device="cpu")

    # a non-finite file (from an older version, say) is skipped by --resume auto and refused by --resume PATH
    nan_copy(good, work / "iter_00000099.pth")
    ckpt, path = find_resume(work, "auto")
    assert path != work / "iter_00000099.pth" and ckpt["global_iter"] < 99
    assert "ignoring checkpoint" in caplog.text and "iter_00000099.pth: its weights or optimiser state are not " \
        "finite" in caplog.text
    with pytest.raises(TpnError, match=r"iter_00000099.pth: its weights or optimiser state are not finite"):
        find_resume(work, str(work / "iter_00000099.pth"))


class FullDisk(io.FileIO):
    """A file on a disk with `room` bytes left: a write past them fails as the kernel's does."""
    room = 4096

    def write(self, b):
        if self.tell() + len(memoryview(b).cast("B")) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(b)


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(tempo_data, tmp_path,  # noqa: F811
                                                                                 monkeypatch):
    cfg = tiny_cfg(tempo_data, FAST + ["train.ckpt_interval_iters=2"])  # saves at iterations 2 and 4
    work = tmp_path / "run"
    real_fdopen, opened = os.fdopen, []

    def fdopen(fd, mode="r", *args, **kwargs):  # the second checkpoint file meets a full disk
        if mode == "wb":
            opened.append(fd)
            if len(opened) == 2:
                return io.BufferedWriter(FullDisk(fd, "wb"))
        return real_fdopen(fd, mode, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(TpnError) as e:
        train(cfg, work, device="cpu")
    monkeypatch.undo()
    assert str(e.value) == (f"{work}/epoch_0001.pth: not saved (No space left on device); no file was written; "
                            f"the last good checkpoint is {work}/iter_00000002.pth")
    assert sorted(p.name for p in work.iterdir() if p.suffix in (".pth", ".tmp")) == ["iter_00000002.pth"]
    assert torch.load(work / "iter_00000002.pth", weights_only=True)["global_iter"] == 2
    assert not (work / "tpn.lock").exists()
    s = train(cfg, work, resume="auto", device="cpu")  # and the run goes on from it
    assert torch.load(work / "epoch_0001.pth", weights_only=True)["global_iter"] == 4 and s["epochs"]


def _iters_logged(metrics_path) -> int:
    if not metrics_path.exists():
        return 0
    return sum('"train"' in x for x in metrics_path.read_text().splitlines()[:-1])


def _start(argv, work, env):
    """`argv` in a new session (its DataLoader workers too), as Slurm runs a job's processes."""
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _sigterm_after(proc, work, iters, timeout=120, sig=signal.SIGTERM):
    """`sig` to every process of `proc`'s session (Slurm signals all of a job's processes, a
    terminal's Ctrl-C its foreground group) once `iters` iterations are logged; returns (exit
    status, stderr)."""
    deadline = time.time() + timeout
    while _iters_logged(work / "metrics.jsonl") < iters:
        assert proc.poll() is None and time.time() < deadline, "the run ended or stalled before the signal"
        time.sleep(0.02)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def test_sigterm_saves_a_checkpoint_releases_the_lock_and_resume_continues(tempo_data, tmp_path):  # noqa: F811
    work = tmp_path / "run"
    args = ["train", "tpn_tiny_synth", "--work-dir", str(work), "--device", "cpu",
            *sets(TINY + data_overrides(tempo_data) + FAST + ["train.batch_size=2", "train.lr_batch_size=2",
                                                               "data.num_workers=1"])]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    code, err = _sigterm_after(_start([sys.executable, "-m", "tpn.cli", *args], work, env), work, 3)
    assert code == 143, err[-3000:]
    assert "Traceback" not in err and "DataLoader worker" not in err, err[-3000:]
    line = next(x for x in err.splitlines() if "SIGTERM" in x)
    saved = sorted(work.glob("iter_*.pth"))
    assert len(saved) == 1, err[-3000:]
    it = torch.load(saved[0], weights_only=True)["global_iter"]
    assert 3 <= it < 16
    assert line.endswith(f"WARNING SIGTERM: stopped at epoch 1 iteration {it} of 16, saved {saved[0]} "
                         f"(--resume auto continues); the lock {work}/tpn.lock is released"), line
    assert not (work / "tpn.lock").exists()

    # a save cut short by a SIGKILL leaves its temporary file: the next start removes it
    fd, partial = tempfile.mkstemp(prefix=".epoch_0001.pth.", suffix=".tmp", dir=work)
    os.write(fd, b"PK\x03\x04 half a checkpoint")
    os.close(fd)
    r = subprocess.run([sys.executable, "-m", "tpn.cli", *args, "--resume", "auto"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"removed {os.path.basename(partial)}: checkpoint saves cut short by a kill" in r.stderr
    assert f"resumed from {saved[0]} (epoch 1, iteration {it} of 16)" in r.stderr
    assert not os.path.exists(partial)
    assert torch.load(work / "epoch_0001.pth", weights_only=True)["global_iter"] == 16
    iters = [json.loads(x)["iter"] for x in (work / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert iters == list(range(1, 17))


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tempo_data, tmp_path):  # noqa: F811
    """Ctrl-C reaches the run and its loader workers at once: the workers ignore it, the run
    saves at the next step as for SIGTERM and exits 130; `--resume auto` continues."""
    work = tmp_path / "run"
    args = ["train", "tpn_tiny_synth", "--work-dir", str(work), "--device", "cpu",
            *sets(TINY + data_overrides(tempo_data) + FAST + ["train.batch_size=2", "train.lr_batch_size=2",
                                                               "data.num_workers=1"])]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    code, err = _sigterm_after(_start([sys.executable, "-m", "tpn.cli", *args], work, env), work, 3,
                               sig=signal.SIGINT)
    assert code == 130, err[-3000:]
    assert "Traceback" not in err and "DataLoader worker" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert "Ctrl-C: stopping at the next step with a checkpoint" in err
    saved = sorted(work.glob("iter_*.pth"))
    assert len(saved) == 1, err[-3000:]
    it = torch.load(saved[0], weights_only=True)["global_iter"]
    assert f"WARNING SIGINT: stopped at epoch 1 iteration {it} of 16, saved {saved[0]} (--resume auto continues)" \
        in err, err[-3000:]
    assert not (work / "tpn.lock").exists()
    r = subprocess.run([sys.executable, "-m", "tpn.cli", *args, "--resume", "auto"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert torch.load(work / "epoch_0001.pth", weights_only=True)["global_iter"] == 16


def test_sigterm_at_an_epochs_last_step_saves_the_epoch_and_the_resume_validates_it(tempo_data, tmp_path, monkeypatch):  # noqa: F811
    """SIGTERM during an epoch's last step: the epoch's checkpoint is saved (not an in-epoch one), marked not
    validated, since a validation would have to outlast the grace time too; the resume validates it first."""
    import tpn.engine.train as T

    real, calls = T.train_step, []

    def signal_at_the_epochs_last_step(run, *args, **kwargs):
        calls.append(1)
        if len(calls) == run.data.iters_per_epoch:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(run, *args, **kwargs)

    monkeypatch.setattr(T, "train_step", signal_at_the_epochs_last_step)
    cfg = tiny_cfg(tempo_data, FAST + ["train.epochs=3", "train.val_interval=1"])
    work = tmp_path / "run"
    summary = train(cfg, work, device="cpu")
    assert summary["stopped"] == (f"SIGTERM: stopped during epoch 1's validation, saved {work}/epoch_0001.pth "
                                  "(--resume auto validates epoch 1, then continues)")
    rows = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows][-2:] == ["train", "epoch"] and rows[-1]["epoch"] == 1
    ckpt = torch.load(work / "epoch_0001.pth", weights_only=True)
    assert ckpt["global_iter"] == len(calls) > 1 and ckpt["iter_in_epoch"] == 0 and ckpt["val_pending"] is True
    assert not list(work.glob("iter_*.pth")) and not (work / "tpn.lock").exists()
    monkeypatch.setattr(T, "train_step", real)
    summary = train(cfg, work, resume="auto", device="cpu")
    rows = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    assert summary["stopped"] is None and [r["epoch"] for r in rows if r["kind"] == "val"] == [1, 2, 3]


def test_sigterm_during_validation_cuts_it_short_and_the_resume_runs_it(tempo_data, tmp_path, monkeypatch):  # noqa: F811
    """A long validation would outlast the grace time before SIGKILL: SIGTERM ends it, the epoch is
    saved as not validated, and the resume validates it (best.pth, the val record) before training on."""
    import tpn.engine.train as T

    real, calls = T.predict_probs, []

    def signal_first(*args, **kwargs):  # SIGTERM arrives as the first validation starts
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "predict_probs", signal_first)
    cfg = tiny_cfg(tempo_data, FAST + ["train.epochs=2", "train.val_interval=1"])
    work = tmp_path / "run"
    summary = train(cfg, work, device="cpu")
    assert summary["stopped"] == (f"SIGTERM: stopped during epoch 1's validation, saved {work}/epoch_0001.pth "
                                  "(--resume auto validates epoch 1, then continues)")
    rows = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows][-1] == "epoch" and "val" not in [r["kind"] for r in rows]
    assert "val_top1" not in rows[-1] and not (work / "best.pth").exists() and not (work / "tpn.lock").exists()
    assert torch.load(work / "epoch_0001.pth", weights_only=True)["val_pending"] is True

    summary = train(cfg, work, resume="auto", device="cpu")
    assert summary["stopped"] is None and len(calls) == 3  # epoch 1's validation, then epoch 2's
    rows = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["kind"] == "val"] == [1, 2]
    assert (work / "best.pth").exists() and summary["best_val_top1"] is not None
    final = torch.load(work / "epoch_0002.pth", weights_only=True)
    assert final["val_pending"] is False
    # exact: the same weights as a run never stopped (the resumed validation takes no extra random draw)
    monkeypatch.setattr(T, "predict_probs", real)
    train(cfg, tmp_path / "straight", device="cpu")
    straight = torch.load(tmp_path / "straight" / "epoch_0002.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(final["state_dict"][k], v) for k, v in straight.items())


@pytest.mark.slow
def test_sigterm_under_torchrun_stops_every_rank_at_one_step(tempo_data, tmp_path):  # noqa: F811
    work = tmp_path / "run"
    args = ["train", "tpn_tiny_synth", "--work-dir", str(work), "--device", "cpu",
            *sets(TINY + data_overrides(tempo_data) + FAST + ["train.batch_size=2", "train.lr_batch_size=4",
                                                               "data.num_workers=1"])]  # 8 iterations
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                str(free_port()), "-m", "tpn.cli"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    code, err = _sigterm_after(_start([*torchrun, *args], work, env), work, 2)
    assert code != 0
    saved = sorted(work.glob("iter_*.pth"))
    assert len(saved) == 1, err[-3000:]
    ckpt = torch.load(saved[0], weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and 2 <= ckpt["global_iter"] < 8
    assert err.count(f"SIGTERM: stopped at epoch 1 iteration {ckpt['global_iter']} of 8, saved {saved[0]}") == 1
    assert "DataLoader worker" not in err, err[-3000:]
    assert not (work / "tpn.lock").exists()
    r = subprocess.run([*torchrun, *args, "--resume", "auto"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {saved[0]}" in r.stderr
    assert torch.load(work / "epoch_0001.pth", weights_only=True)["global_iter"] == 8


def test_validation_names_the_videos_it_could_not_read(tempo_data, tmp_path, caplog):  # noqa: F811
    """An unreadable validation video is left out of the accuracy, and the log line and the
    `metrics.jsonl` row say how many were."""
    val = tmp_path / "val.txt"
    val.write_text((tempo_data / "val.txt").read_text() + "missing_1.mp4 0\nmissing_2.mp4 1\n")
    cfg = tiny_cfg(tempo_data, FAST + ["train.val_interval=1", f"data.val_list={val}"])
    with caplog.at_level(logging.INFO, logger="tpn"):
        train(cfg, tmp_path / "run", device="cpu")
    row = next(json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
               if json.loads(x)["kind"] == "val")
    assert (row["videos"], row["unreadable"]) == (8, 2)
    assert any("on 8 videos (2 unreadable, left out: see bad_videos.jsonl)" in r.getMessage() for r in caplog.records)
