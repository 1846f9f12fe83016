"""The unmask driver: config, CLI, trainer loop, learner actor, data, checkpoints, logging."""
