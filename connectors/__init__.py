"""The node on the network: FastAPI routers, wire models, signed HTTP client, CLI, data sources."""

__all__: list[str] = []
