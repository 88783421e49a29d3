"""Remote engines: OpenAI-compatible servers (vLLM, SGLang, TGI, llama-server, Ollama, another mr-notebook)
whose models are served through our endpoint as ``NAME/<model id>``."""

from mr_notebook.engine.remote.client import RemoteEngine
from mr_notebook.engine.remote.config import KINDS, EngineSpec, add_spec, load_specs, remove_spec
from mr_notebook.engine.remote.registry import RemoteEngines

__all__ = ["KINDS", "EngineSpec", "RemoteEngine", "RemoteEngines", "add_spec", "load_specs", "remove_spec"]
