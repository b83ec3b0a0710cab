"""Providers, one module each, and the registry of their names."""

from __future__ import annotations

from imagegw.providers.base import Provider
from imagegw.providers.modelscope import ModelScope
from imagegw.providers.openai_compat import OpenAICompatible
from imagegw.providers.siliconflow import SiliconFlow

#: route name -> provider class; adding a provider is one module and one line here
PROVIDERS: dict[str, type[Provider]] = {
    cls.name: cls for cls in (ModelScope, SiliconFlow, OpenAICompatible)
}

__all__ = ["PROVIDERS", "Provider"]
