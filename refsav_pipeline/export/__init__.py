"""Turning a finished run into Sa2VA's files (training JSON, benchmark layout) and a run report."""
