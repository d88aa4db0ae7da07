"""Administration: user accounts (/api/admin/users) and the audit trail (/api/admin/audit).

Admins manage accounts; no admin route reads another user's conversations.
"""
