"""One router per resource; :func:`connectors.app.create_app` mounts those of the node's roles."""

__all__: list[str] = []
