"""
The C{twistd spmgmt} plugin.  Kept tiny: the tap module is imported only when
the plugin is used, so C{twistd --help} stays fast and installs no reactor.
"""

from twisted.application.service import ServiceMaker

spmgmt = ServiceMaker(
    "spmgmt",
    "spmgmt.tap",
    "spmgmt: service processor management (sub-commands: sp, arbiter, proxy).",
    "spmgmt",
)
