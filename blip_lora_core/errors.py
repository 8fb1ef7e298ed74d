"""The project's own error types: every failure a user can cause raises one of these."""


class BlipLoraError(Exception):
    """Base class: a clear, user-facing error (bad file, bad input, bad configuration)."""


class AdapterError(BlipLoraError):
    """An adapter file or adapter state does not fit the model or is corrupt."""


class ConfigError(BlipLoraError):
    """A configuration file or value is invalid."""


class DataError(BlipLoraError):
    """A dataset file, line or image is invalid."""


class ImageDecodeError(BlipLoraError):
    """A camera image message cannot be decoded."""


class BagError(BlipLoraError):
    """A ROS 2 bag cannot be read or written."""


class TrainingError(BlipLoraError):
    """Training cannot go on (for example a NaN loss)."""


class LabelStudioError(BlipLoraError):
    """A Label Studio server cannot be reached, refuses a request, or holds a project blip-lora cannot use."""
