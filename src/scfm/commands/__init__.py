"""The command line: ``cli.py`` registers one module per command; ``_common.py`` holds shared flags."""
