"""Wire models (pydantic), one module per resource, apart from the core's domain objects.

Each module holds the request and response models of one router and the functions converting
them to and from :mod:`trusted_space` objects. A response model has no field for a secret, so a
secret can never end up in a response.
"""

__all__: list[str] = []
