"""``cnnserve bento``: build the serving bento from ``bentofile.yaml`` with the chosen exported models inside.

``bentofile.yaml`` lists the default set under ``models:``, so a plain ``bentoml build`` packs those. This wrapper
swaps that list for the models the user names (or ``CNNSERVE_MODELS``) and checks each one is a cnnserve export
before building, so the bento serves exactly what it carries: once built, ``bentoml serve <tag>`` (and the container)
finds the models in the bento's own model store, with no ``CNNSERVE_MODELS`` needed. The bento's Python requirements
are the serving ones from ``bentofile.yaml``: no torch.
"""

from __future__ import annotations

from pathlib import Path

from cnnserve.service.store import find_entry

__all__ = ["ROOT", "build_bento", "bento_models"]

ROOT = Path(__file__).resolve().parent.parent


def bento_models(models: list[str] | None, bentofile: Path = ROOT / "bentofile.yaml") -> list[str]:
    """The store tags to pack: those given, else the ``models:`` of ``bentofile``; each must be a cnnserve export."""
    import yaml

    tags = list(models or yaml.safe_load(bentofile.read_text()).get("models") or [])
    for tag in tags:
        find_entry(tag)  # ModelNotFound with a message that says to export it
    return tags


def build_bento(models: list[str] | None = None, *, version: str | None = None, bentofile: Path | None = None):
    """Build the bento into the store (``BENTOML_HOME``) and return it (``bentoml.Bento``)."""
    import attr
    import bentoml
    from bentoml._internal.bento.build_config import BentoBuildConfig

    bentofile = bentofile or ROOT / "bentofile.yaml"
    tags = bento_models(models, bentofile)
    config = attr.evolve(BentoBuildConfig.from_file(str(bentofile)), models=tags)
    bento = bentoml.Bento.create(build_config=config, version=version, build_ctx=str(bentofile.parent))
    return bento.save()
