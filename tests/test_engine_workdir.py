"""Work dirs: one run at a time (a lock), no silent overwrite of an earlier run, metrics.jsonl
going forward only after a resume, and a list of broken videos ending with one line."""
import json
import os
import socket
import subprocess
import sys

import pytest

from tests.test_engine_common import TINY, cli, data_overrides, sets, tempo_data, tiny_cfg  # noqa: F401
from tpn.engine import workdir
from tpn.engine.report import drop_rows_after
from tpn.engine.train import train
from tpn.errors import TpnError

FAST = ["train.epochs=1", "train.batch_size=8", "train.lr_batch_size=8", "train.val_interval=0",
        "data.num_workers=0"]


def one_line_error(r, *texts):
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().count("\n") == 0, r.stderr
    for text in texts:
        assert text in r.stderr, r.stderr


def dead_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)  # reaped by subprocess.run: no process has this pid now


def plant_lock(work, pid, host):
    work.mkdir(parents=True, exist_ok=True)
    (work / workdir.LOCK).write_text(json.dumps({"pid": pid, "host": host, "started": "2026-01-01T00:00:00"}))


def test_a_second_train_on_a_locked_work_dir_exits_with_one_line(tempo_data, tmp_path):  # noqa: F811
    work = tmp_path / "run"
    me, _ = workdir.lock(work)  # this test process holds the lock, as a running `tpn train` would
    lock = json.loads((work / "tpn.lock").read_text())
    assert lock["pid"] == os.getpid() and lock["host"] == socket.gethostname() and lock["started"]
    r = cli("train", "tpn_tiny_synth", "--work-dir", str(work), "--device", "cpu",
            *sets(TINY + data_overrides(tempo_data) + FAST))
    one_line_error(r, f"{work} is in use by another training run (pid {os.getpid()} on host {socket.gethostname()}",
                   "another --work-dir")
    assert not list(work.glob("*.pth")) and not (work / "metrics.jsonl").exists()
    assert json.loads((work / "tpn.lock").read_text()) == me  # the refused run left the lock alone
    workdir.unlock(work, me)
    assert not (work / "tpn.lock").exists()


def test_a_stale_lock_is_taken_over_and_every_lock_is_released(tempo_data, tmp_path, caplog):  # noqa: F811
    cfg = tiny_cfg(tempo_data, FAST)
    work = tmp_path / "run"
    pid = dead_pid()
    plant_lock(work, pid, socket.gethostname())
    train(cfg, work, device="cpu", max_iters=1)
    assert f"taking over the stale lock of a run that is gone (pid {pid} on host" in caplog.text
    assert not (work / "tpn.lock").exists()  # released on a normal end
    plant_lock(work, dead_pid(), socket.gethostname())
    with pytest.raises(TpnError, match="checkpoint file not found"):
        train(cfg, work, resume=str(tmp_path / "nope.pth"), device="cpu")
    assert not (work / "tpn.lock").exists()  # ... and on an error


def test_a_lock_from_another_host_needs_break_lock(tempo_data, tmp_path, caplog):  # noqa: F811
    cfg = tiny_cfg(tempo_data, FAST)
    work = tmp_path / "run"
    plant_lock(work, os.getpid(), "node-elsewhere")
    with pytest.raises(TpnError, match=r"locked by a run on another host \(pid \d+ on host node-elsewhere.*"
                                       r"cannot be checked from .*: if it does not, pass --break-lock"):
        train(cfg, work, device="cpu", max_iters=1)
    assert json.loads((work / "tpn.lock").read_text())["host"] == "node-elsewhere"
    train(cfg, work, device="cpu", max_iters=1, break_lock=True)
    assert "--break-lock: taking over the lock of pid" in caplog.text and not (work / "tpn.lock").exists()


def test_checkpoints_without_resume_are_refused_and_overwrite_starts_afresh(tempo_data, tmp_path):  # noqa: F811
    work = tmp_path / "run"
    args = ["train", "tpn_tiny_synth", "--work-dir", str(work), "--device", "cpu",
            *sets(TINY + data_overrides(tempo_data) + FAST)]
    assert cli(*args).returncode == 0
    before = (work / "epoch_0001.pth").stat().st_mtime_ns
    r = cli(*args)
    one_line_error(r, f"{work} holds checkpoints of an earlier run (epoch_0001.pth)",
                   "--resume auto", "a new --work-dir", "--overwrite")
    assert (work / "epoch_0001.pth").stat().st_mtime_ns == before
    one_line_error(cli(*args, "--overwrite", "--resume", "auto"), "pass one of them")
    (work / "bad_videos.jsonl").write_text('{"path": "x.mp4"}\n')
    r = cli(*args, "--overwrite")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--overwrite: deleted the earlier run's bad_videos.jsonl, epoch_0001.pth, metrics.jsonl" in r.stderr
    assert not (work / "bad_videos.jsonl").exists() and (work / "epoch_0001.pth").stat().st_mtime_ns > before
    rows = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    assert [x["iter"] for x in rows if x["kind"] == "train"] == [1, 2, 3, 4]  # the new run's rows only


def test_resume_drops_the_metrics_rows_past_the_checkpoint(tempo_data, tmp_path):  # noqa: F811
    cfg = tiny_cfg(tempo_data, FAST + ["train.epochs=2", "train.val_interval=1"])
    work = tmp_path / "run"
    train(cfg, work, device="cpu")  # 4 iterations an epoch: rows up to iteration 8
    path = work / "metrics.jsonl"
    full = [json.loads(x) for x in path.read_text().splitlines()]
    assert max(r["iter"] for r in full) == 8
    with path.open("a") as f:
        f.write('{"kind": "train", "iter": 9, "lo')  # a row cut short by a kill
    train(cfg, work, resume=str(work / "epoch_0001.pth"), device="cpu")  # back to iteration 4
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    iters = [r["iter"] for r in rows]
    assert iters == sorted(iters) and len(rows) == len(full)  # forward only: no zigzag
    assert [(r["kind"], r["iter"]) for r in rows] == [(r["kind"], r["iter"]) for r in full]


def test_drop_rows_after_keeps_rows_up_to_the_iteration(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"kind": k, "iter": i}) + "\n" for k, i in
                            [("train", 1), ("train", 2), ("val", 2), ("epoch", 2), ("train", 3), ("val", 4)]))
    assert drop_rows_after(path, 2) == 2
    assert [json.loads(x)["iter"] for x in path.read_text().splitlines()] == [1, 2, 2, 2]
    assert drop_rows_after(path, 2) == 0 and drop_rows_after(tmp_path / "none.jsonl", 0) == 0


def test_a_list_of_only_broken_videos_ends_with_one_line(tempo_data, tmp_path):  # noqa: F811
    root = tmp_path / "broken"
    root.mkdir()
    lines = []
    for i in range(8):
        name = f"v{i}.mp4"
        if i % 2:
            (root / name).write_bytes(b"")
        else:
            (root / name).write_bytes(os.urandom(2048))
        lines.append(f"{name} {i % 4}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    work = tmp_path / "run"
    over = data_overrides(tempo_data) + [f"data.root={root}", f"data.train_list={root}/train.txt",
                                         "train.epochs=1", "train.batch_size=2", "train.lr_batch_size=2",
                                         "train.val_interval=0", "data.num_workers=1"]
    r = cli("train", "tpn_tiny_synth", "--work-dir", str(work), "--device", "cpu", *sets(TINY + over))
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "worker" not in r.stderr, r.stderr[-3000:]
    # the other lines are the log's warning per broken video
    error, = [x for x in r.stderr.splitlines() if x.startswith("tpn: error: ")]
    assert error.startswith(f"tpn: error: {root}/train.txt: a training sample found no readable video in 10 tries")
    assert f"of its 8 videos failed so far, listed in {work}/bad_videos.jsonl" in error, error
    reported = {json.loads(x)["path"] for x in (work / "bad_videos.jsonl").read_text().splitlines()}
    assert reported and reported <= {str(root / f"v{i}.mp4") for i in range(8)}


def test_under_torchrun_a_locked_work_dir_stops_every_rank(tempo_data, tmp_path):  # noqa: F811
    from tests.test_engine_common import free_port

    work = tmp_path / "run"
    me, _ = workdir.lock(work)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                        str(free_port()), "-m", "tpn.cli", "train", "tpn_tiny_synth", "--work-dir", str(work),
                        "--device", "cpu", *sets(TINY + data_overrides(tempo_data) + FAST)],
                       capture_output=True, text=True, timeout=180)  # a rank waiting for rank 0 would hang here
    assert r.returncode != 0
    assert r.stderr.count(f"tpn: error: {work} is in use by another training run (pid {os.getpid()}") == 2, r.stderr
    assert json.loads((work / "tpn.lock").read_text()) == me
    workdir.unlock(work, me)


def test_resuming_a_finished_run_says_there_is_nothing_to_train(tempo_data, tmp_path):  # noqa: F811
    work = tmp_path / "run"
    args = ["train", "tpn_tiny_synth", "--work-dir", str(work), "--device", "cpu",
            *sets(TINY + data_overrides(tempo_data) + FAST)]
    assert cli(*args).returncode == 0
    before = (work / "metrics.jsonl").read_text()
    r = cli(*args, "--resume", "auto")  # was: 'resumed from ...' and exit 0, without a word that nothing ran
    assert r.returncode == 0, r.stderr[-2000:]
    assert "epoch_0001.pth ends at epoch 1 of train.epochs 1: nothing to train" in r.stderr, r.stderr
    assert "--set train.epochs=" in r.stderr
    assert (work / "metrics.jsonl").read_text() == before


def test_overwrite_deletes_nothing_when_the_new_run_cannot_start(tempo_data, tmp_path):  # noqa: F811
    work = tmp_path / "run"
    args = ["train", "tpn_tiny_synth", "--work-dir", str(work), "--device", "cpu",
            *sets(TINY + data_overrides(tempo_data) + FAST)]
    assert cli(*args).returncode == 0
    kept = sorted(p.name for p in work.iterdir() if p.name != "config.yaml")
    one_line_error(cli(*args, "--overwrite", "--set", "model.head.num_classes=3"), "model.head.num_classes is 3")
    assert sorted(p.name for p in work.iterdir() if p.name != "config.yaml") == kept  # the earlier run is all there


def test_an_empty_lock_file_is_a_run_taking_the_lock_or_a_stale_one(tmp_path):
    """`lock` creates the file, then writes who holds it: a start that finds it empty waits for the
    holder to appear (it took the file over, and two runs held the dir); one that stays empty (its
    writer died between the two steps) is taken over once it is `LOCK_SETTLE_S` old."""
    import threading
    import time

    work = tmp_path / "run"
    work.mkdir()
    path = work / workdir.LOCK
    path.write_text("")  # another run created it an instant ago; it writes itself in 0.3 s
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "started": "2026-01-01T00:00:00"}
    writer = threading.Thread(target=lambda: (time.sleep(0.3), path.write_text(json.dumps(holder))))
    writer.start()
    with pytest.raises(TpnError, match=rf"is in use by another training run \(pid {os.getppid()} on host"):
        workdir.lock(work)
    writer.join()
    assert json.loads(path.read_text()) == holder  # left alone
    for age in (60, 0):  # an empty lock left long ago, and one left just now that stays empty
        path.write_text("")
        os.utime(path, (time.time() - age, time.time() - age))
        t = time.monotonic()
        me, warnings = workdir.lock(work)
        waited = time.monotonic() - t
        assert warnings == [f"{path}: not a lock this program wrote; taking it over"]
        assert waited < 1 if age else workdir.LOCK_SETTLE_S - 0.1 < waited < workdir.LOCK_SETTLE_S + 1, waited
        workdir.unlock(work, me)
    path.mkdir()  # not a file at all
    with pytest.raises(TpnError, match=rf"^{path}: cannot read the work dir's lock \(Is a directory\)$"):
        workdir.lock(work)


def test_resuming_with_another_model_config_names_the_fields_and_keeps_config_yaml(tempo_data, tmp_path):  # noqa: F811
    """The failed resume names what differs from the checkpoint's config (or its label map) and
    leaves the run's own config.yaml as it was (it was overwritten before the checkpoint was found
    not to fit)."""
    work = tmp_path / "run"
    args = ["train", "tpn_tiny_synth", "--work-dir", str(work), "--device", "cpu",
            *sets(TINY + data_overrides(tempo_data) + FAST)]
    assert cli(*args).returncode == 0
    saved = (work / "config.yaml").read_text()
    r = cli(*args, "--resume", "auto", "--set", "train.epochs=2", "--set", "model.neck.out_channels=24")
    one_line_error(r, "this run's config differs from the checkpoint's in model.neck.out_channels: ",
                   " here: resume with the run's own config (", "weights do not fit the model")
    assert (work / "config.yaml").read_text() == saved
    names = (tempo_data / "labels.txt").read_text().split()
    swapped = tmp_path / "swapped.txt"  # the same classes in another order: every label would change meaning
    swapped.write_text("\n".join([names[1], names[0], *names[2:]]) + "\n")
    r = cli(*args, "--resume", "auto", "--set", "train.epochs=2", "--set", f"data.label_map={swapped}")
    one_line_error(r, "epoch_0001.pth: trained with another label map (4 classes there, 4 here; class 0 is "
                   f"'{names[0]}' there, '{names[1]}' here): resume with the run's own label map")
    assert (work / "config.yaml").read_text() == saved
    r = cli(*args, "--resume", "auto", "--set", "train.epochs=2")  # with its own config it goes on
    assert r.returncode == 0, r.stderr[-2000:]
    assert "epochs: 2" in (work / "config.yaml").read_text()
