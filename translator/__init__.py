"""translator: LSTM sequence-to-sequence machine translation with Keras 3 and TensorFlow."""

from translator.config import load_config

__version__ = "0.1.0"


def __getattr__(name: str):
    # Translator pulls in TensorFlow; import it lazily so `import translator` stays cheap.
    if name == "Translator":
        from translator.api import Translator

        return Translator
    raise AttributeError(f"module 'translator' has no attribute {name!r}")


__all__ = ["Translator", "load_config", "__version__"]
