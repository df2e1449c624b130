"""CLI command groups; each module has ``register(app)`` adding its commands to the main app."""

__all__: list[str] = []
