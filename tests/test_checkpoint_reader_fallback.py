"""torch builds whose archive reader has no `get_record_size` (torch 2.11, the GPU machine's):
the checkpoint tests again, in a process whose reader lacks it (tests/conftest.py), so tpn reads
record sizes and bytes itself (`tpn.checkpoint._StoredRecords`). A run on the H100 with torch 2.11
found every checkpoint load failing there before this path existed."""
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def test_checkpoint_tests_pass_with_a_reader_without_record_sizes():
    env = dict(os.environ, TPN_TEST_READER_WITHOUT_RECORD_SIZE="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "tests/test_checkpoint_archives.py", "tests/test_checkpoint_safety.py",
                        "tests/test_checkpoint_bounds.py"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "failed" not in r.stdout


def test_both_readers_give_the_same_tensors(tmp_path, monkeypatch):
    from tpn import checkpoint

    obj = {"w": torch.randn(3, 4)[:, 1:], "n": torch.arange(5), "empty": torch.zeros(0), "half": torch.ones(2).half()}
    torch.save(obj, tmp_path / "c.pth")
    direct = checkpoint.load_file(tmp_path / "c.pth")[0]
    real = torch._C.PyTorchFileReader

    class NoSize:
        def __init__(self, path):
            self.reader = real(path)

        def __getattr__(self, name):
            if name == "get_record_size":
                raise AttributeError(name)
            return getattr(self.reader, name)

    monkeypatch.setattr(checkpoint.torch._C, "PyTorchFileReader", NoSize)
    own = checkpoint.load_file(tmp_path / "c.pth")[0]
    for k, v in obj.items():
        assert torch.equal(direct[k], v) and torch.equal(own[k], v) and own[k].dtype == v.dtype, k
