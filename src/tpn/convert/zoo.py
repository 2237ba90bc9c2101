"""Released checkpoints by name: `zoo:NAME` wherever a checkpoint path goes, and `tpn zoo`.

`tpn.convert.weights.resolve_source("zoo:NAME")` (public as `tpn.zoo.resolve_checkpoint`) downloads the released file once into `TPN_HOME` (default: the
user's cache folder, `~/.cache/tpn`), checks it against the sha256 prefix its publisher put in the
file name, converts it through the safe loader (`tpn.convert.weights.convert_checkpoint`) and
caches the converted tpn checkpoint; later calls return the cached file without a request.
`TPN_ZOO_MIRROR` (a base URL) replaces `https://download.openmmlab.com/` in every address, for a
mirror or a local copy. Facts (names, addresses, published accuracy) are from mmaction2's
`configs/recognition/tpn/metafile.yml` and README (Apache-2.0). See docs/convert.md.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tpn.errors import TpnError

log = logging.getLogger("tpn.zoo")

PREFIX = "zoo:"
OPENMMLAB = "https://download.openmmlab.com/"
_MM = OPENMMLAB + "mmaction/v1.0/recognition/tpn/"
_LICENCE = ("mmaction2 release: code Apache-2.0; the weights carry no licence of their own "
            "and were trained on Kinetics-400/Something-Something (research datasets): check their terms")


@dataclass(frozen=True)
class ZooModel:
    name: str  # ours: `zoo:NAME`
    source_name: str  # the publisher's name (also accepted after `zoo:`)
    url: str
    sha256: str  # the hex prefix the publisher put in the file name
    config: str  # our config the weights fill
    dataset: str
    top1: float  # published, with the publisher's test views
    top5: float
    views: str
    size: str
    licence: str = _LICENCE

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _mm(name: str, stamp: str, sha: str, config: str, dataset: str, top1: float, top5: float,
        views: str, size: str, short: str) -> ZooModel:
    return ZooModel(short, name, f"{_MM}{name}/{name}_{stamp}-{sha}.pth", sha, config, dataset, top1, top5,
                    views, size)


# sizes: the metafile's parameter count x 4 bytes (float32), not measured on the files
MODELS = {m.name: m for m in (
    _mm("tpn-slowonly_r50_8xb8-8x8x1-150e_kinetics400-rgb", "20220913", "97d0835d", "tpn_r50_8x8_k400",
        "Kinetics-400", 74.20, 91.48, "10 clips x 3 crops", "~366 MB, 91.5 M parameters",
        "tpn_r50_8x8_k400_mmaction2"),
    _mm("tpn-slowonly_imagenet-pretrained-r50_8xb8-8x8x1-150e_kinetics400-rgb", "20220913", "fed3f4c1",
        "tpn_r50_8x8_k400", "Kinetics-400", 76.74, 92.57, "10 clips x 3 crops", "~366 MB, 91.5 M parameters",
        "tpn_r50_8x8_k400_in1k_mmaction2"),
    _mm("tpn-tsm_imagenet-pretrained-r50_8xb8-1x1x8-150e_sthv1-rgb", "20230221", "940a3615",
        "tpn_tsm_r50_1x1x8_sthv1", "Something-Something V1", 51.87, 79.67, "8 clips x 3 crops",
        "~330 MB, 82.4 M parameters", "tpn_tsm_r50_1x1x8_sthv1_mmaction2"),
)}


def tpn_home() -> Path:
    """`TPN_HOME`, else `tpn` under the platform's cache folder."""
    if os.environ.get("TPN_HOME"):
        return Path(os.environ["TPN_HOME"]).expanduser()
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "tpn"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tpn"


def find(name: str) -> ZooModel:
    """The zoo entry called `name` (ours or the publisher's), or a one-line error listing them."""
    name = name.removeprefix(PREFIX)
    for m in MODELS.values():
        if name in (m.name, m.source_name):
            return m
    raise TpnError(f"{PREFIX}{name}: no such released model; known: {', '.join(MODELS)} (see `tpn zoo`)")


def source_url(model: ZooModel) -> str:
    mirror = os.environ.get("TPN_ZOO_MIRROR")
    if mirror and model.url.startswith(OPENMMLAB):
        return mirror.rstrip("/") + "/" + model.url[len(OPENMMLAB):]
    return model.url


def paths(model: ZooModel, home: Path | None = None) -> tuple[Path, Path]:
    """(the downloaded file, the converted tpn checkpoint) under `home`."""
    home = Path(home) if home is not None else tpn_home()
    return home / "downloads" / model.filename, home / "checkpoints" / f"{model.name}.pth"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, dst: Path, what: str, progress: bool = True) -> None:
    """`url` to `dst` through `dst.part` (renamed when complete); any failure removes the part
    file and is one line naming the URL and where to put the file by hand."""
    import http.client
    import urllib.error
    import urllib.request

    from tqdm import tqdm

    dst.parent.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(f"{dst.name}.{os.getpid()}.part")  # one per process: DDP ranks may fetch at once
    by_hand = f"download it by hand and place it at {dst}"
    got, total = 0, None
    try:  # the part file never outlives this call: renamed when complete, else removed
        with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as f:
            total = int(r.headers["Content-Length"]) if r.headers.get("Content-Length") else None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dst.name, disable=not progress,
                      dynamic_ncols=True) as bar:
                while block := r.read(1 << 20):
                    f.write(block)
                    got += len(block)
                    bar.update(len(block))
        if total is not None and got != total:
            raise OSError(f"the connection closed after {got:,} of {total:,} bytes")
        part.replace(dst)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        if got:
            raise TpnError(f"{what}: the download of {url} stopped ({reason}); run again, or {by_hand}") from None
        raise TpnError(f"{what}: cannot download {url} ({reason}); {by_hand}") from None
    finally:
        part.unlink(missing_ok=True)


def resolve(name: str, convert, home: Path | None = None, progress: bool = True) -> Path:
    """The converted tpn checkpoint of released model `name`: cached, or downloaded (one log line
    says so), hash-checked and converted once by `convert(src, dst, config=...)` (the safe loader's
    `convert_checkpoint`, passed in by `tpn.convert.weights`)."""
    model = find(name)
    raw, converted = paths(model, home)
    if converted.is_file():
        return converted
    what = f"{PREFIX}{model.name}"
    if not raw.is_file():
        url = source_url(model)
        log.warning("%s: downloading %s to %s", what, url, raw)
        download(url, raw, what, progress)
    digest = sha256_of(raw)
    if not digest.startswith(model.sha256):
        raw.unlink()
        raise TpnError(f"{what}: {raw} has sha256 {digest[:8]}..., not the published {model.sha256}: "
                       "deleted it (a damaged or substituted file); run again to download it afresh")
    converted.parent.mkdir(parents=True, exist_ok=True)
    log.warning("%s", convert(raw, converted, config=model.config).splitlines()[0])
    return converted


def zoo_table(home: Path | None = None) -> str:
    """`tpn zoo`: one block per released model."""
    lines = []
    for m in MODELS.values():
        _raw, converted = paths(m, home)
        lines += [f"zoo:{m.name}  ({'cached' if converted.is_file() else 'not downloaded'})",
                  f"  config {m.config}; {m.dataset} top-1 {m.top1:.2f} / top-5 {m.top5:.2f} ({m.views}, published)",
                  f"  from {m.source_name} ({m.size}; sha256 {m.sha256}...)",
                  f"  {m.url}",
                  f"  licence: {m.licence}"]
    lines.append(f"cache: {home or tpn_home()} (TPN_HOME); use as --checkpoint zoo:NAME")
    return "\n".join(lines)
