"""Apps that use a trained generator: `colorize` (command line), `colorize-ui` (web page), `colorize-import-seed`."""
