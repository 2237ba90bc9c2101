"""tpn: Temporal Pyramid Networks for video action recognition in plain PyTorch."""
from tpn.config import Config, ConfigError, load_config
from tpn.errors import TpnError

__version__ = "0.1.0"


def load_model(config, checkpoint=None):
    """Build a model from a shipped config name or YAML path and optionally load weights.

    `checkpoint` may be a `tpn` checkpoint or a foreign one that `tpn convert` reads
    (e.g. an mmaction2 TPN checkpoint), or `"zoo:NAME"`, a released model downloaded and
    converted once (`tpn zoo` lists them; see `tpn.zoo`). Returns a `torch.nn.Module` in eval mode whose
    `forward(x)` maps (N, 3, T, H, W) normalised float clips to (N, num_classes) logits.
    """
    from tpn.convert.weights import load_model as _load_model

    return _load_model(config, checkpoint)


__all__ = ["Config", "ConfigError", "TpnError", "load_config", "load_model", "__version__"]
