"""One router per resource; :func:`connectors.node.app.create_app` mounts those of its roles."""

__all__: list[str] = []
