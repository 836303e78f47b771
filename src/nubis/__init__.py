"""nubis: a cloud-native archive for medical images."""

__version__ = "0.1.0"
