import os

# cluster/local.sh starts Ray with token auth; Ray's Python client reads the mode once, when it is
# first imported, so it is set here, before any test module imports ray. (The Makefile sets it too.)
os.environ["RAY_AUTH_MODE"] = "token"
