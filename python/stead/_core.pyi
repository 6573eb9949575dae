"""Type stubs for the Rust extension ``stead._core``."""

__version__: str
