"""`tpn train`, `tpn test`, `tpn predict`, `tpn demo` sub-commands."""


def add_engine_commands(sub, add_set) -> None:
    """Add the engine sub-commands to the `tpn` parser."""
