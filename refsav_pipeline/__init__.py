"""refsav-pipeline: SA-V masklets → Ref-SAV referring expressions."""

__version__ = "0.1.0"
