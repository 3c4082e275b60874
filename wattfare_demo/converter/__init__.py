"""The demo: a file converter, written the way a Wattfare customer writes their app.

- routes.py    the page, POST /api/wattfare-token, POST /api/convert (blueprint `bp`)
- service.py   extract → wf.grant(token).model(WATTFARE_MODEL) → Markdown, via the SDK only
- extract.py   uploaded bytes (txt/md/html/csv/json/docx/pdf) → text, with readable errors
- prompts.py   the words sent to the model
- render.py    the sanitised Markdown preview and the download link

`create_app` registers `routes.bp`. Importing this package imports nothing else, so
extract.py stays usable (and testable) without Flask or the SDK.
"""
