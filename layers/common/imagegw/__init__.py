"""lambda-image-gateway: an OpenAI-compatible gateway to image-generation providers.

All logic lives here, in the shared Lambda layer; the functions under `functions/` are thin.
"""

__version__ = "0.1.0"
