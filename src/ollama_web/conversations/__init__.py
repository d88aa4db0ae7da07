"""Conversations and their message trees: CRUD, branches, search, export/import, titles.

- `repository`: every query, through the one owner-scoped builder `owned()`; `tree`:
  branches and versions; `search`: full text; `export`; `titles`; `writes`: short Core write
  transactions used by chat; `service`, `schemas`, `dependencies`, `router`.
"""
