"""A package on purpose: without __init__.py this folder's conftest.py would be imported as the
top-level module `conftest`, replacing tests/conftest.py in sys.modules, and every
`from conftest import ROOT, clean_env` collected after it (tests/ipython, tests/integration,
tests/notebooks) would fail. As a package its conftest is `browser.conftest`."""
