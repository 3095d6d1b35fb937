"""The Triton backend (work in progress)."""
LOAD_ERROR = "the Triton backend is not built yet"
