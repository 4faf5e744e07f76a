"""The A1111-compatible HTTP adapter (`python -m handler.http`); the app itself is in .app.

Light on purpose: `python -m handler.http` imports this package first, and the server's libraries
import beside the engine (handler/startup.py), not before it.
"""
