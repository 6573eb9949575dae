"""Runtimes served by the HTTP and CLI tests (``stead serve tests._apps.counter:runtime``)."""
