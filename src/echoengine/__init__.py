"""echoengine: train, evaluate and run classifiers of animal and environmental sounds.

The data path, one module per stage::

    audio -> clips -> features -> catalog/dataset -> (models -> train -> evaluate / detect -> export / serve)

The Python API (:mod:`echoengine.api`) is importable from here: ``train``,
``cross_validate``, ``evaluate``, ``calibrate``, ``predict``, ``detect``,
``export``, ``load_bundle``, ``load_bundles``, ``species`` and ``Place``. They are loaded on first
use (they import torch), so that ``import echoengine`` itself stays light.

Examples
--------
>>> import echoengine as ee
>>> ee.EchoConfig().replace(model={"embedder": "birdnet"}).model.head_name
'linear'
"""

from echoengine.config import EchoConfig
from echoengine.errors import AudioError, ConfigError, DataError, EchoError

__version__ = "0.1.0"
_API = ("Place", "calibrate", "cross_validate", "detect", "evaluate", "export", "load_bundle", "load_bundles",
        "predict", "species", "train")
__all__ = ["AudioError", "ConfigError", "DataError", "EchoConfig", "EchoError", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from echoengine import api

        return getattr(api, name)
    raise AttributeError(f"module 'echoengine' has no attribute {name!r}")
