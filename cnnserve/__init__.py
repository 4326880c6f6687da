"""cnnserve: classic vision networks in readable PyTorch (``cnnserve.models``), exported to ONNX with their
pre/post-processing in the graph (``cnnserve.export``), served torch-free on onnxruntime (``cnnserve.service``).

The wheel installs ``models/``, ``export/`` and ``service/`` inside this package. In a source tree — the
repository, or a bento's ``src/`` — they sit beside this folder instead, so that the repository keeps the design's
top-level folders; the lines below give them the same import names there (``PYTHONPATH=.`` is then enough, as on
the GPU machine, where nothing is installed).
"""

import os as _os

# The one version string: pyproject.toml reads it (dynamic version), the service's /openapi.json and /v2 show it,
# and a bento, which carries this file but no installed distribution, has it too.
__version__ = "0.1.0"

_here = _os.path.dirname(_os.path.abspath(__file__))
_source_root = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "service")) and _os.path.isfile(
    _os.path.join(_source_root, "service", "__init__.py")
):
    __path__.append(_source_root)  # noqa: F821 - a package's own __path__
