"""``python -m mount [--home DIR] MOUNTPOINT``: the mount process on its own."""

from .cli import standalone

standalone(prog_name="nexus mount")
