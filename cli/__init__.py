"""The command line: one console script, `allocator`, one subcommand per job. The top layer: nothing imports it."""
