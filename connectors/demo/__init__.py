"""The demo (``make demo``) and the worked examples on real data.

``run`` drives a six-node space through the whole story; ``data`` generates its synthetic
enterprises; ``stats`` holds the plaintext statistics it checks against; ``report`` writes the
HTML report; ``example`` runs the default-credit example.
"""

__all__: list[str] = []
