"""Human and JSON forms of every result; see `core` for the dispatchers and the JSON envelope."""

from kvmigrate.report import cleanup, data, demo, phases, prisma, setup  # noqa: F401  (registers the renderers)
from kvmigrate.report import rehearse as rehearse  # noqa: F401  (registers the rehearse renderers)
from kvmigrate.report import shadow as shadow  # noqa: F401  (registers the shadow renderers)
from kvmigrate.report.core import dumps, envelope, render, to_dict

__all__ = ["dumps", "envelope", "render", "to_dict"]
