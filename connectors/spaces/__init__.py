"""Local spaces: several real node processes on this host, from a TOML file or from local files.

``space`` starts and stops a space described by ``space.toml`` (``trusted-space space up``);
``local`` builds a throw-away space over local files for ``trusted-space local score|train``.
"""

__all__: list[str] = []
