"""Subcommands of the ``multirater`` console script (each: ``add_parser`` and ``run``)."""
