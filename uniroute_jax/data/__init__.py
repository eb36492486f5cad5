"""Data sources; each returns a :class:`uniroute_jax.types.RoutingData`."""

from uniroute_jax.data.synthetic import make_synthetic

__all__ = ["make_synthetic"]
