"""Data edge cases: list paths with repeated spaces, videos with damaged packets, `tpn data check --config`."""
import shutil


from tpn.config import DataConfig
from tpn.data.check import check_list
from tpn.data.datasets import build_dataset, read_annotations


# ---------------------------------------------------------------- list paths
def test_list_path_keeps_repeated_spaces(synth_dataset, tmp_path):
    src = sorted((synth_dataset / "videos").rglob("*.mp4"))[0]
    name = "a  b   c.mp4"  # two and three consecutive spaces
    shutil.copy(src, tmp_path / name)
    (tmp_path / "frames  dir").mkdir()
    lst = tmp_path / "list.txt"
    lst.write_text(f"{name} 1\n  {name}\t0  \n")
    assert read_annotations(lst, "list") == [(name, 1, -1), (name, 0, -1)]
    raw = tmp_path / "raw.txt"
    raw.write_text("frames  dir 120 1\n")
    assert read_annotations(raw, "mmaction_rawframes") == [("frames  dir", 1, 120)]
    cfg = DataConfig(root=str(tmp_path), test_list=str(lst), clip_len=4, frame_interval=2, short_side=64,
                     test_crop_size=64, test_clips=1, test_crops=1, num_workers=0)
    item = build_dataset(cfg, "test")[0]
    assert item.ok  # the file itself was read, not 'a b c.mp4'
    rep = check_list(lst, root=str(tmp_path), workers=1, clip_len=4, frame_interval=2, progress=False)
    assert rep["counts"] == {"ok": 2} and rep["clean_lines"] == [f"{name} 1", f"  {name}\t0  "]
