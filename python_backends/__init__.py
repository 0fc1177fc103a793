"""Importable logic behind the Python-backend models of the Triton model repository.

Modules here never import ``triton_python_backend_utils``: the thin ``model.py`` files in
``model_repository/`` do the Triton marshalling, so everything here is unit-testable.
"""
