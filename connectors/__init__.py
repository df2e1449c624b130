"""The node on the network: FastAPI routers, wire models, signed HTTP client, CLI, data sources."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("trusted-space")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
