"""What wires (the top floor): typed run configs and their one set of defaults, the CLI, run folders,
the RL bootstrap, the driver and actor groups, the Ray session, and every recipe (math RL, tool RL,
supervised). Nothing below imports this package; see docs/architecture.md."""
