"""What every program of the connectors layer shares: a node directory's settings and the errors."""

__all__: list[str] = []
