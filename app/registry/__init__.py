"""Model repository (files on disk) and registry (live, pooled sessions)."""
