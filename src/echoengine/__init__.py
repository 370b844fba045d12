"""echoengine: train, evaluate and run classifiers of animal and environmental sounds.

The data path, one module per stage::

    audio -> clips -> features -> catalog/dataset -> (models -> train -> evaluate / detect -> export / serve)
"""

from echoengine.config import EchoConfig
from echoengine.errors import AudioError, ConfigError, DataError, EchoError

__version__ = "0.1.0"
__all__ = ["AudioError", "ConfigError", "DataError", "EchoConfig", "EchoError", "__version__"]
