"""Shared pytest setup: keep this file small."""

import os

# Quiet TensorFlow's C++ logging; must happen before TensorFlow is first imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
