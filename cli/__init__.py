"""The `llmops` command line. Each sub-command group lives in its own module; heavy imports stay inside
commands so `--help` is instant."""
