"""The ``refcocog-tools`` command line: every argparse line of the package.

May import every other layer; nothing imports it.
"""
