"""An IPMI 2.0 BMC that lies: it acknowledges every power command and keeps reporting
the power on. Run by the tests as ``python lying_ipmi_bmc.py PORT`` with the account
(username, then password) on standard input; prints ``ready`` once it listens on
127.0.0.1:PORT. Built on pyghmi's server side, as virtualbmc is.
"""

from __future__ import annotations

import sys

import pyghmi.ipmi.bmc as bmc  # type: ignore[import-untyped]


class LyingBmc(bmc.Bmc):  # type: ignore[misc]
    def get_power_state(self) -> str:
        return "on"

    def power_off(self) -> None:
        return None  # completion code 0: "done"

    def power_on(self) -> None:
        return None

    def power_shutdown(self) -> None:
        return None

    def power_reset(self) -> None:
        return None


def main() -> None:
    port = int(sys.argv[1])
    username = sys.stdin.readline().rstrip("\n")
    password = sys.stdin.readline().rstrip("\n")
    server = LyingBmc({username: password}, port=port, address="127.0.0.1")
    print("ready", flush=True)
    server.listen()


if __name__ == "__main__":
    main()
