"""Build, push and deploy the worker to RunPod serverless (`python -m infra.deploy`; see infra/README.md).

Standard library, requests and PyYAML only: nothing from engine/, handler/ or schemas/.
"""
