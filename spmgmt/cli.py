"""spmgmtctl: the operator's command-line client (being written)."""


def main() -> None:
    raise SystemExit("spmgmtctl: not built yet")
