"""The one Dagster-aware part of the shared leaf: :mod:`.resources`. Only stage ``assets.py`` modules and
``pipelines`` import it (an import contract in pyproject.toml checks)."""
