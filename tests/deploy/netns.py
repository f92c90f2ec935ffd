"""A small network made of Linux network namespaces, for the deployment tests.

Everything lives in namespaces this module creates (never the host's interfaces): a
router namespace joins a few leaf namespaces, each on its own /24 of 10.213.0.0/16::

    pub  10.213.2.2  --+                      +-- 10.213.1.2  srv  (behind 1:1 NAT,
    turn 10.213.3.2  --+-- rtr (forwards, NAT) |                    public 10.213.0.10)
    blk  10.213.4.2  --+                      +

`rtr` maps the public address 10.213.0.10 to `srv` both ways (DNAT in, SNAT out), the
way a cloud VM's 1:1 NAT does, and drops anything sent to the private address itself. Rules are nftables; :meth:`Lab.close` deletes every
namespace, which removes its veths and rules with it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

PUBLIC_SERVER = "10.213.0.10"
LEAVES = {"srv": 1, "pub": 2, "turn": 3, "blk": 4}


def address(leaf: str) -> str:
    return f"10.213.{LEAVES[leaf]}.2"


def unavailable() -> str | None:
    """Return why namespace tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "network-namespace tests need root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install {package}; scripts/test.sh does)"
    probe = f"sslabprobe{os.getpid()}"
    try:
        subprocess.run(["ip", "netns", "add", probe], check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        return f"cannot create a network namespace: {exc.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _run(*args: str, stdin: str | None = None) -> None:
    done = subprocess.run(list(args), input=stdin, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")


@dataclass
class Lab:
    """The namespaces of one test module; names carry the pid so parallel runs never meet."""

    prefix: str = field(default_factory=lambda: f"ss{os.getpid() % 100000}")
    created: list[str] = field(default_factory=list)

    def ns(self, leaf: str) -> str:
        return f"{self.prefix}{leaf}"

    def exec_args(self, leaf: str) -> list[str]:
        """Return the argv prefix that runs a command inside `leaf`'s namespace."""
        return ["ip", "netns", "exec", self.ns(leaf)]

    def up(self) -> Lab:
        """Create the router, the leaves, their links and the NAT."""
        rtr = self.ns("rtr")
        self._add(rtr)
        _run("ip", "netns", "exec", rtr, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for leaf, subnet in LEAVES.items():
            ns = self.ns(leaf)
            self._add(ns)
            outer, inner = f"{self.prefix}{leaf[0]}r", f"{self.prefix}{leaf[0]}l"
            # Both ends are created directly inside the namespaces: the host sees neither.
            _run("ip", "link", "add", outer, "netns", rtr, "type", "veth", "peer", "name", inner,
                 "netns", ns)
            _run("ip", "-n", rtr, "addr", "add", f"10.213.{subnet}.1/24", "dev", outer)
            _run("ip", "-n", rtr, "link", "set", outer, "up")
            _run("ip", "-n", ns, "addr", "add", f"10.213.{subnet}.2/24", "dev", inner)
            _run("ip", "-n", ns, "link", "set", inner, "up")
            _run("ip", "-n", ns, "route", "add", "default", "via", f"10.213.{subnet}.1")
        self.nft("rtr", f"""
            table ip nat {{
              chain prerouting {{
                type nat hook prerouting priority dstnat; policy accept;
                ip daddr {PUBLIC_SERVER} dnat to {address("srv")}
              }}
              chain postrouting {{
                type nat hook postrouting priority srcnat; policy accept;
                ip saddr {address("srv")} snat to {PUBLIC_SERVER}
              }}
            }}
            table inet rtrfw {{
              chain forward {{
                type filter hook forward priority filter; policy accept;
                # Private means private: only NATed traffic (sent to the public address, or
                # answering what the server sent from it) reaches the server's own address.
                ip daddr {address("srv")} ct status dnat accept
                ip daddr {address("srv")} ct status snat accept
                ip daddr {address("srv")} drop
              }}
            }}""")
        return self

    def nft(self, leaf: str, ruleset: str) -> None:
        """Load an nftables ruleset into `leaf`'s namespace."""
        _run("ip", "netns", "exec", self.ns(leaf), "nft", "-f", "-", stdin=ruleset)

    def counters(self, leaf: str, table: str) -> dict[str, int]:
        """Return the packet count of every named counter in `table` (family inet)."""
        done = subprocess.run([*self.exec_args(leaf), "nft", "-j", "list", "counters",
                               "table", "inet", table], capture_output=True, text=True, check=True)
        import json

        result = {}
        for item in json.loads(done.stdout)["nftables"]:
            if "counter" in item:
                result[item["counter"]["name"]] = item["counter"]["packets"]
        return result

    def popen(self, leaf: str, args: Sequence[str], **kwargs: object) -> subprocess.Popen[str]:
        return subprocess.Popen([*self.exec_args(leaf), *args], text=True, **kwargs)  # type: ignore[call-overload]

    def close(self) -> None:
        """Delete every namespace made here (their veths and rules go with them)."""
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.created.clear()

    def _add(self, ns: str) -> None:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # a leftover of a crash
        _run("ip", "netns", "add", ns)
        self.created.append(ns)
        _run("ip", "-n", ns, "link", "set", "lo", "up")
