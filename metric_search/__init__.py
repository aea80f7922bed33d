"""The search and the user surface: GP engine, run store, export, analysis and the CLI."""
__version__ = "0.1.0"
