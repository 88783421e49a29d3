"""One engine interface for every front end: magics, widgets and the CLI.

::

    from mr_notebook.client import connect

    engine = connect()                      # remote (Jupyter server / mr-notebook serve) or in-process
    engine.pull("ai/smollm2", progress=print)
    with engine.chat_stream("ai/smollm2", [{"role": "user", "content": "Hi"}], max_tokens=64) as stream:
        for text in stream:
            ...
    base_url, api_key = engine.endpoint()   # for the OpenAI SDK

Importing this package is cheap: httpx and the engine are imported by the engine object that needs them.
"""

from mr_notebook.client.base import ChatStream, Engine, ProgressCallback, PullSummary
from mr_notebook.client.discovery import connect, find_server
from mr_notebook.errors import error_for_code
from mr_notebook.settings import runtime_file

__all__ = [
    "ChatStream",
    "Engine",
    "ProgressCallback",
    "PullSummary",
    "connect",
    "error_for_code",
    "find_server",
    "runtime_file",
]
