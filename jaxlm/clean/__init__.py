"""jaxlm.clean: corpus cleaning on datatrove (see __main__ for the command, run for the stages)."""
