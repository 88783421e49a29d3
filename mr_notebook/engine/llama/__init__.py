"""The llama.cpp side of a worker, on llama-cpp-python's low-level API.

Imported only inside a worker process (``python -m mr_notebook.engine.worker``); the host never imports
llama_cpp. ``model`` loads the weights and the vocabulary, ``prompt`` renders chat templates into tokens,
``sampling`` builds one sampler chain per sequence, ``scheduler`` runs the batched decode loop and
``embedder`` the embedding context.
"""
