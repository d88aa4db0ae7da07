"""The audit trail: who did what to which target, from where, and when.

Other domains record events with `ollama_web.audit.service.record_event(session, ...)`
inside their request transaction, or `record_event_detached(sessionmaker, ...)` when the
event must survive a request that fails (e.g. a refused login).
"""
