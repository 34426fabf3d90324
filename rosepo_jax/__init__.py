"""rosepo-jax: RosePO (smoothed personalized preference optimisation) for LLM recommenders in JAX."""

__version__ = "0.1.0"
