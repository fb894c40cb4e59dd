"""The one place the version is written: ``setup.cfg`` reads it (``attr:``), ``tfcompress.__version__`` re-exports it.

Importing this module imports nothing else, so ``tfcompress --version`` answers without TensorFlow.

Example:
    >>> from tfcompress._version import __version__
    >>> __version__.count(".") >= 2
    True
"""

__version__ = "0.1.0"
