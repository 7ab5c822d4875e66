"""``import nexus``: the name our documentation promised, an alias of :mod:`nexusfs`.

    import nexus
    nx = nexus.connect()                          # zero configuration
    nx = nexus.connect(config_file="nexus.yaml")  # or a configuration file

Everything here is :mod:`nexusfs`'s own object (``nexus.connect is nexusfs.connect``);
new code may use either name.
"""

from nexusfs import *  # noqa: F403 - the alias re-exports the public API as it is
from nexusfs import __all__, __version__  # noqa: F401
