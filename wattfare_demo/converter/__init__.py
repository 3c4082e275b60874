"""The demo: a file converter, written the way a Wattfare customer writes their app.

- routes.py     the page, POST /api/wattfare-token, /api/convert/plan, /api/convert (`bp`)
- service.py    grant status → plan (extract, chunk) → one model call per part, via the SDK
- filetypes.py  the one table of file types: accept list, hints, messages, dispatch
- extract.py    uploaded bytes (Word, PDF, Excel, …) → Markdown sections, readable errors
- cage.py       extract.py in a resource-limited child process (forkserver, pipe, rlimits)
- chunking.py   Markdown → parts on structure, one request each
- prompts.py    the words sent to the model
- streaming.py  server-sent events and the pump that keeps bytes flowing
- render.py     the sanitised Markdown preview and the download link

`create_app` registers `routes.bp`. Importing this package imports nothing else, so
extract.py stays usable (and testable) without Flask or the SDK. docs/converter.md
explains the pipeline.
"""
