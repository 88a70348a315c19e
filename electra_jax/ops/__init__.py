"""Kernel seam: plain reference forms of ops and their tuned forms."""
