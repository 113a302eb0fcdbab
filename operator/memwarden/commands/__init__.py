"""The ``memwarden`` sub-commands, one module each (``add_arguments`` and ``run``), which
memwarden.cli imports only when that command runs."""
