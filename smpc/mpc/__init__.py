"""MPyC sessions: task files, the session process, launching it; MPyC internals in one adapter."""
