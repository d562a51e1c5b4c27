"""Package layout (the metadata is in pyproject.toml).

twisted/plugins/ is a namespace folder that must ship without an __init__.py so that twistd finds `evc`.
The top-level schema/ is the one source of the schemas; it ships inside the package as evc/_schema/
(package_dir maps the folder, and each schema/<kind>/, into the package), where evc.schema.schema_dir()
finds it after any install.
"""
from setuptools import find_namespace_packages, setup

SCHEMA = ["evc._schema"] + [f"evc._schema.{kind}" for kind in find_namespace_packages(where="schema")]

setup(
    packages=find_namespace_packages(include=["evc", "evc.*", "twisted.plugins"]) + SCHEMA,
    package_dir={"evc._schema": "schema"},
    # front/manual's page and OpenAPI document are served as they are (no build step).
    package_data={**{name: ["*.json"] for name in SCHEMA}, "evc.front.manual": ["openapi.json", "static/*"]},
    include_package_data=True,
)
