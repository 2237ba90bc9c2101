"""Released models by name, the public face of `tpn.convert.zoo`: `resolve_checkpoint(x)` turns a
checkpoint argument into a local file (`zoo:NAME` downloaded, hash-checked and converted once into
`TPN_HOME`, then cached; a path as it is). `MODELS` is the table `tpn zoo` prints."""
from tpn.convert.weights import resolve_source as resolve_checkpoint
from tpn.convert.zoo import MODELS, OPENMMLAB, PREFIX, ZooModel, find, paths, tpn_home, zoo_table


def resolve(name: str):
    """The converted tpn checkpoint of the released model `name` (`zoo:` optional)."""
    return resolve_checkpoint(PREFIX + name.removeprefix(PREFIX))


__all__ = ["MODELS", "OPENMMLAB", "PREFIX", "ZooModel", "find", "paths", "resolve", "resolve_checkpoint",
           "tpn_home", "zoo_table"]
