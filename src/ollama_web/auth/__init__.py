"""Accounts and access: who the caller is (one dependency), passwords, login sessions, CSRF.

Other domains import `ollama_web.auth.dependencies` (`CurrentPrincipal`, `AdminPrincipal`,
`CurrentUser`, `AdminUser`) and nothing else from here.
"""
