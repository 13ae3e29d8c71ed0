"""
Imports run downward: the PB layer and the wire modules import no process
package, and the arbiter and the proxy do not load the SP side (so the
proxy process never carries the SP agent or the command runner).
"""

from __future__ import annotations

import json
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

PROCESS_PACKAGES = ("spmgmt.sp", "spmgmt.arbiter", "spmgmt.proxy")


def loadedBy(module: str) -> list[str]:
    """The spmgmt modules that importing C{module} in a fresh interpreter loads."""
    code = (
        f"import json, sys, {module}; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('spmgmt'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return list(json.loads(out))


class LayeringTests(SynchronousTestCase):
    def test_wireLayersImportNoProcessPackage(self) -> None:
        """C{spmgmt.pb}, the etcd client, the history and the election machine stand on their own."""
        for module in ("spmgmt.pb.session", "spmgmt.pb.server", "spmgmt.etcd", "spmgmt.events", "spmgmt.election"):
            loaded = loadedBy(module)
            self.assertEqual([m for m in loaded if m.startswith(PROCESS_PACKAGES)], [], module)

    def test_arbiterAndProxyDoNotLoadTheSP(self) -> None:
        """Neither the arbiter nor the proxy process loads C{spmgmt.sp} or C{spmgmt.commands}."""
        for module in ("spmgmt.arbiter.service", "spmgmt.proxy.service"):
            loaded = loadedBy(module)
            self.assertEqual([m for m in loaded if m.startswith(("spmgmt.sp", "spmgmt.commands"))], [], module)
