"""`tpn data ...` sub-commands."""


def add_data_commands(sub, add_set) -> None:
    """Add the data sub-commands to the `tpn` parser."""
