"""The HTTP API: OpenAI-compatible routes and Docker Model Runner's routes, one set of Tornado handlers.

Hosted by the Jupyter server extension (``mr_notebook.serverext``, under ``{base_url}mr/``), by
``mr-notebook serve`` (``standalone.serve``) and by ``%model serve`` (``standalone.start_in_thread``).
"""

from mr_notebook.api.app import make_app_handlers, make_application
from mr_notebook.api.context import ApiContext, ApiLimits

__all__ = ["ApiContext", "ApiLimits", "make_app_handlers", "make_application"]
