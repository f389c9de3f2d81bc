"""The composition root: settings, process launchers, the `zapflow` CLI."""
