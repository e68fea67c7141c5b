"""An OpenAI-compatible chat server for InternVL2, with a browser chat page: `python -m paddlemix.serve`.

Modules: protocol (request validation, response bodies), prompt (messages -> chat()'s prompt),
media (images, size caps), engine (the model on one worker thread, batched decoding), answer
(stream pieces that add up to chat()'s text), app (routes, SSE, disconnects), errors (OpenAI's shape).
"""
